r"""Multi-task learning: a shared trunk, task heads, and a loss weighting or gradient aggregator.

Each cell of a benchmark table is a flagfile:

    python -m experiments.mtl \
      --flagfile=experiments/flags/mtl/multi_mnist_upgrad.flags \
      --data_dir=/path/to/mnist --workdir=runs/multi_mnist_upgrad

A single-task baseline is the same entry point with one task:

    python -m experiments.mtl --flagfile=experiments/flags/mtl/multi_mnist_equal.flags \
      --tasks=left --data_dir=/path/to/mnist --workdir=runs/multi_mnist_stl_left

and `--stl_workdirs=left=runs/multi_mnist_stl_left,right=...` adds Δm% against them to
results.json. Every field of `mtl.runner.MtlRunConfig` is a flag (`--helpfull`). Killing a run
and rerunning the same command resumes it from the latest checkpoint.
"""

from core import cli
from mtl import runner

cli.define_flags(runner.MtlRunConfig)

if __name__ == "__main__":
    cli.run(runner.MtlRunConfig, runner.build, runner.report)
