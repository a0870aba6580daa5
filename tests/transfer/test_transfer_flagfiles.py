"""The transfer flagfiles: each parses into a valid config of the grid it belongs to, and
begins with what it is, its run command and its published number."""

import glob
import os

import pytest
from absl import flags

from core import cli
from transfer import runner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAGFILES = sorted(glob.glob(os.path.join(REPO, "experiments", "flags", "transfer", "*.flags")))
PUBLISHED = "# Published number: none (the four-scenario grid is ours; see docs/results.md)"


def _parse(path, *extra):
    values = flags.FlagValues()
    cli.define_flags(runner.TransferRunConfig, values)
    values(["transfer", f"--flagfile={path}", "--data_dir=/data", *extra])
    return cli.config_from_flags(runner.TransferRunConfig, values)


def test_the_grid_has_a_source_and_every_strategy_for_both_targets():
    names = {os.path.basename(p).removesuffix(".flags") for p in FLAGFILES}
    expected = {f"{target}_{strategy}" for target in ("mnist_5to9", "fashion")
                for strategy in runner.STRATEGIES}
    assert names == expected | {"mnist_0to4_source"}


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_each_flagfile_is_a_valid_documented_run(path):
    with open(path) as f:
        lines = f.read().splitlines()
    header = [line for line in lines if line.startswith("#")]
    assert lines[:len(header)] == header and len(header) >= 3
    run = [line for line in header if line.startswith("# Run: python -m experiments.transfer")]
    assert len(run) == 1 and f"--flagfile=experiments/flags/transfer/{os.path.basename(path)}" \
        in run[0]
    assert header[-1] == PUBLISHED
    source = os.path.basename(path) == "mnist_0to4_source.flags"
    config = _parse(path, "--train_per_class=10")
    if config.strategy != "scratch":
        assert "--source_workdir=runs/transfer_source_mnist_0to4" in run[0]
        config = _parse(path, "--train_per_class=10",
                        "--source_workdir=runs/transfer_source_mnist_0to4")
    config.validate()
    assert config.network == "lenet"
    if source:
        assert config.classes == (0, 1, 2, 3, 4) and config.strategy == "scratch"
    elif "mnist_5to9" in path:
        assert config.dataset == "mnist" and config.classes == (5, 6, 7, 8, 9)
    else:
        assert config.dataset == "fashion_mnist" and config.classes == ()
