r"""Runs one experiment as several JAX processes on this machine (core/launch.py).

    python -m experiments.launch --num_processes=2 --cpu_devices=2 -- \
      python -m experiments.maml --flagfile=experiments/flags/maml/sinusoid_10shot.flags \
      --workdir=runs/sinusoid_2proc

rehearses a cluster run: 2 processes x 2 CPU devices, one mesh of 4 devices,
one run directory (written by process 0). On a real cluster run the same
experiment command on every host instead, with the coordinator flags:

    python -m experiments.maml ... --coordinator_address=<host 0>:1234 \
      --num_processes=<hosts> --process_id=<this host's index>

or `--multihost` alone under SLURM or on a Cloud TPU slice, where
`jax.distributed.initialize()` finds the cluster itself.

Exit status: the first failing process's (0 when all succeed; 2 bad input;
130 interrupted: relaunch the same command to resume).
"""

import sys

from absl import app
from absl import flags

from core import launch
from core.errors import UserInputError

flags.DEFINE_integer("num_processes", 2, "How many processes.")
flags.DEFINE_integer("cpu_devices", None, "CPU devices per process (JAX_NUM_CPU_DEVICES); "
                     "default: leave the platform's devices as they are.")
flags.DEFINE_integer("port", None, "The coordinator's port on 127.0.0.1 (default: a free one).")


def main(argv: list[str]) -> None:
    try:
        status = launch.run(argv[1:], flags.FLAGS.num_processes, flags.FLAGS.cpu_devices,
                            flags.FLAGS.port)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status)


if __name__ == "__main__":
    app.run(main)
