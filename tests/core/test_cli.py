"""Flags derived from config dataclasses: one definition per field."""

import dataclasses
import glob
import os

import pytest
from absl import flags

from core import cli
from core import experiment
from core.errors import ConfigError
from meta import runner
from mtl import runner as mtl_runner
from tests.core import toy_family

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse(config_cls, *argv):
    flag_values = flags.FlagValues()
    cli.define_flags(config_cls, flag_values)
    flag_values(["prog", *argv])
    return cli.config_from_flags(config_cls, flag_values), flag_values


def test_every_field_is_a_flag_with_its_default_type_and_help():
    config, flag_values = _parse(toy_family.ToyConfig)
    assert config == toy_family.ToyConfig(workdir="runs/run")
    for field in dataclasses.fields(toy_family.ToyConfig):
        assert field.name in flag_values
    help_text = flag_values["optimizer"].help
    assert "One of: adam, sgd, momentum" in help_text
    # An override keeps the help of the field it overrides.
    assert flag_values["batch_size"].help.startswith("Training examples per step")
    assert flag_values["batch_size"].default == 8


def test_flags_set_typed_values_and_a_tuple_field_parses():
    config, _ = _parse(runner.MamlRunConfig, "--dataset=omniglot", "--ways=20",
                       "--omniglot_split=6,3", "--grad_clip=10", "--nofirst_order",
                       "--data_dir=/data", "--workdir=/tmp/x")
    assert config.omniglot_split == (6, 3) and config.ways == 20
    assert config.grad_clip == 10.0 and config.first_order is False
    assert config.workdir == "/tmp/x"


def test_missing_workdir_takes_the_family_default():
    config, _ = _parse(runner.MamlRunConfig, "--dataset=omniglot", "--ways=20", "--shots=5")
    assert config.workdir == "runs/maml_omniglot_20w5s"


@pytest.mark.parametrize("value, message", [("6", "takes 2 values"),
                                            ("six,3", "comma-separated int")])
def test_bad_tuple_values_give_one_clear_error(value, message):
    with pytest.raises(ConfigError, match=message):
        _parse(runner.MamlRunConfig, f"--omniglot_split={value}")


def test_every_maml_flagfile_gives_a_valid_config():
    paths = sorted(glob.glob(os.path.join(REPO, "experiments/flags/maml/*.flags")))
    assert len(paths) == 9
    for path in paths:
        config, _ = _parse(runner.MamlRunConfig, f"--flagfile={path}", "--data_dir=/data")
        config.validate()
        name = os.path.basename(path)
        assert config.dataset == name.split("_")[0], name


def test_choices_and_lower_bounds_are_checked_by_validate():
    with pytest.raises(ConfigError, match="unknown --optimizer='rmsprop'"):
        toy_family.ToyConfig(workdir="w", optimizer="rmsprop").validate()
    with pytest.raises(ConfigError, match="--batch_size must be >= 1"):
        toy_family.ToyConfig(workdir="w", batch_size=0).validate()


def test_resumable_keys_come_from_the_fields():
    keys = runner.MamlRunConfig.resumable_keys()
    assert {"num_steps", "eval_every", "strategy", "data_dir", "workdir"} <= set(keys)
    assert "inner_lr" not in keys and "seed" not in keys


def test_a_field_declared_without_option_is_refused():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Bad(experiment.RunConfig):
        plain: int = 3

    with pytest.raises(TypeError, match="Bad.plain is not declared with option"):
        experiment.field_options(Bad)


def test_every_mtl_flagfile_gives_a_valid_config():
    paths = sorted(glob.glob(os.path.join(REPO, "experiments/flags/mtl/*.flags")))
    assert len(paths) >= 30
    for path in paths:
        config, _ = _parse(mtl_runner.MtlRunConfig, f"--flagfile={path}", "--data_dir=/data")
        config.validate()
        name = os.path.basename(path)[:-len(".flags")]
        assert name == f"{config.benchmark}_{config.method}", name
