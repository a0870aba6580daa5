"""The transfer flagfiles: each parses into a valid config of the experiment it belongs to, and
begins with what it is, its run command and its published number."""

import glob
import os
import re

import pytest
from absl import flags

from core import cli
from transfer import runner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAGFILES = sorted(glob.glob(os.path.join(REPO, "experiments", "flags", "transfer", "*.flags")))
PUBLISHED = "# Published number: none (the four-scenario grid is ours; see docs/results.md)"
GRID = ("scratch", "structure", "feature_extraction", "finetune", "keep_blocks", "lp_ft", "l2_sp")
DISTILL = {f"distill_{data}_{role}" for data in ("mnist", "fashion")
           for role in ("lenet_teacher", "mlp_student")}
DANN = {f"dann_mnist_to_{target}_{strategy}" for target in ("inverted", "digits")
        for strategy in ("source_only", "dann")}
# The Omniglot grid's flagfiles (tests/transfer/test_omniglot_transfer.py checks them).
OMNIGLOT = {"omniglot_background_source", "omniglot_maml_train_source"} | {
    f"omniglot_eval_{s}" for s in ("scratch", "feature_extraction", "finetune", "keep_blocks")
} | {f"omniglot_maml_test_{s}" for s in ("scratch", "finetune_pretrained", "finetune_maml")}


def _name(path):
    return os.path.basename(path).removesuffix(".flags")


def _parse(path, *extra):
    values = flags.FlagValues()
    cli.define_flags(runner.TransferRunConfig, values)
    values(["transfer", f"--flagfile={path}", "--data_dir=/data", *extra])
    return cli.config_from_flags(runner.TransferRunConfig, values)


def _header(path):
    """(comment lines at the top, the one run command among them)."""
    with open(path) as f:
        lines = f.read().splitlines()
    header = [line for line in lines if line.startswith("#")]
    assert lines[:len(header)] == header and len(header) >= 3
    run = [line for line in header if line.startswith("# Run: python -m experiments.transfer")]
    assert len(run) == 1 and f"--flagfile=experiments/flags/transfer/{os.path.basename(path)}" \
        in run[0]
    return header, run[0]


def test_the_flagfiles_are_the_grid_distillation_and_domain_adaptation():
    grid = {f"{target}_{strategy}" for target in ("mnist_5to9", "fashion") for strategy in GRID}
    assert {_name(p) for p in FLAGFILES} == (grid | {"mnist_0to4_source"} | DISTILL | DANN
                                             | OMNIGLOT)


@pytest.mark.parametrize("path", [p for p in FLAGFILES
                                  if _name(p) not in DISTILL | DANN | OMNIGLOT],
                         ids=os.path.basename)
def test_each_grid_flagfile_is_a_valid_documented_run(path):
    header, run = _header(path)
    assert header[-1] == PUBLISHED
    source = os.path.basename(path) == "mnist_0to4_source.flags"
    config = _parse(path, "--train_per_class=10")
    if config.strategy != "scratch":
        assert "--source_workdir=runs/transfer_source_mnist_0to4" in run
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


@pytest.mark.parametrize("path", [p for p in FLAGFILES if _name(p) in DISTILL],
                         ids=os.path.basename)
def test_each_distillation_flagfile_pairs_a_lenet_teacher_with_an_mlp_student(path):
    header, run = _header(path)
    assert header[-1].startswith("# Published number: none (")
    dataset = "mnist" if "_mnist_" in path else "fashion_mnist"
    teacher_file = path.replace("mlp_student", "lenet_teacher")
    teacher = _parse(teacher_file)
    teacher.validate()
    assert (teacher.strategy, teacher.network, teacher.dataset) == ("scratch", "lenet", dataset)
    if "teacher" in path:
        return
    workdir = re.search(r"--teacher_workdir=(\S+)", run).group(1)
    assert workdir == f"runs/{_name(teacher_file)}"
    assert "--distill_temperature=" in run and "1, 2, 4 or 8" in " ".join(header)
    student = _parse(path, f"--teacher_workdir={workdir}", "--distill_temperature=8")
    student.validate()
    assert (student.strategy, student.network, student.dataset) == ("distill", "mlp", dataset)
    assert student.distill_temperature == 8 and student.distill_lambda == 1
    for key in ("classes", "val_size", "data_seed"):
        assert getattr(student, key) == getattr(teacher, key), key


@pytest.mark.parametrize("path", [p for p in FLAGFILES if _name(p) in DANN],
                         ids=os.path.basename)
def test_each_domain_adaptation_flagfile_is_a_valid_documented_run(path):
    header, _ = _header(path)
    assert header[-1].startswith("# Published number: none (")
    config = _parse(path)
    config.validate()
    assert config.strategy == ("dann" if path.endswith("_dann.flags") else "source_only")
    assert config.da_target == ("inverted" if "_inverted_" in path else "sklearn_digits")
    assert (config.dataset, config.network, config.da_selection) == ("mnist", "lenet",
                                                                     "source_val")
    assert config.da_lr_annealing
    if config.da_target == "sklearn_digits":
        assert "pip install scikit-learn" in header[0]
    pair = _parse(path.replace("_dann.flags", "_source_only.flags")
                  if config.strategy == "dann" else path)
    for key in ("learning_rate", "optimizer", "batch_size", "num_steps", "val_size",
                "da_val_size"):
        assert getattr(config, key) == getattr(pair, key), key
