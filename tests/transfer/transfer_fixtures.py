"""Helpers shared by the transfer tests: tiny configs, runs, and a simulated kill.

The fixtures built on them (the fake MNIST files, the source run) are in this
folder's conftest.py.
"""

from core import experiment
from core.metrics import read_metrics
from transfer import runner

LR = 0.01


def make_config(workdir, data_dir, **overrides) -> runner.TransferRunConfig:
    """A tiny run: an MLP on fake IDX data, 4 steps, one device, no progress bar."""
    base = dict(workdir=str(workdir), data_dir=data_dir, network="mlp", mlp_hidden=(16, 12, 8),
                learning_rate=LR, val_size=10, batch_size=8, eval_batch_size=16, num_steps=4,
                eval_every=4, checkpoint_every=4, log_every=1, num_devices=1, progress=False)
    base.update(overrides)
    return runner.TransferRunConfig(**base)


def train(config, build=runner.build) -> dict:
    """`train_and_evaluate` of `config` with `build`."""
    return experiment.train_and_evaluate(config, build)


class Interrupted(Exception):
    """Stands for a kill: raised when a given step's batch is requested."""


def interrupted_at(step_to_stop, build=runner.build):
    """A build whose batches raise `Interrupted` at `step_to_stop`."""

    def interrupted_build(config, mesh):
        program = build(config, mesh)
        batches = program.batch_fn

        def batch_fn(step):
            if step == step_to_stop:
                raise Interrupted
            return batches(step)

        program.batch_fn = batch_fn
        return program

    return interrupted_build


def rows(workdir) -> list[dict]:
    """metrics.jsonl without its wall-clock times."""
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(workdir)]
