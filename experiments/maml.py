r"""MAML (Finn et al., 2017): meta-train, select on validation, test.

With no flags this runs the paper's sinusoid regression (K = 10):

    python -m experiments.maml

Each cell of the paper's Table 1 is a flagfile:

    python -m experiments.maml \
      --flagfile=experiments/flags/maml/omniglot_5way_1shot.flags \
      --data_dir=/path/to/omniglot --workdir=runs/omni51

Every field of `meta.runner.MamlRunConfig` is a flag (`--helpfull` lists
them). `--fidelity_preset=reference` sets the reference code's hidden details
(meta/fidelity.py; one switch each, an explicit switch wins over the preset).
Killing a run and rerunning the same command resumes it from the latest
checkpoint. The run directory ends with `results.json`.
"""

from core import cli
from meta import runner

cli.define_flags(runner.MamlRunConfig)

if __name__ == "__main__":
    cli.run(runner.MamlRunConfig, runner.build, runner.report)
