"""Multi-process (multi-host) runs: `jax.distributed` from the entry points' flags.

On a cluster every host runs the same command, one process per host, and
JAX's multi-controller runtime joins them into one global mesh: each process
feeds its devices' share of every batch and XLA's collectives do the rest.
The entry points take the coordinator settings as flags:

    --coordinator_address=host0:1234 --num_processes=4 --process_id=<i>

or, with `--multihost` alone, let `jax.distributed.initialize()` detect the
cluster (SLURM, Cloud TPU, Open MPI). On CPU the processes talk through gloo
collectives, so a multi-process run can be rehearsed on one machine
(`experiments/launch.py` starts the processes).
"""

import dataclasses

from core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ClusterFlags:
    """The coordinator settings of a run (all unset: one process, no cluster).

    Attributes:
      multihost: initialise `jax.distributed` (with the fields below, or auto-detected).
      coordinator_address: `host:port` of process 0's coordinator service.
      num_processes: how many processes join.
      process_id: this process's index, 0 .. num_processes - 1.
    """

    multihost: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def explicit(self) -> bool:
        return any(v is not None for v in
                   (self.coordinator_address, self.num_processes, self.process_id))

    def validate(self) -> None:
        """Raises ConfigError for a partial or impossible set of coordinator flags."""
        if not self.explicit:
            return
        given = {"--coordinator_address": self.coordinator_address,
                 "--num_processes": self.num_processes, "--process_id": self.process_id}
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise ConfigError(f"multi-process run: give --coordinator_address, --num_processes "
                              f"and --process_id together (missing {', '.join(missing)})")
        if ":" not in self.coordinator_address:
            raise ConfigError(f"--coordinator_address={self.coordinator_address!r} must be "
                              f"host:port")
        if self.num_processes < 1:
            raise ConfigError(f"--num_processes={self.num_processes} must be >= 1")
        if not 0 <= self.process_id < self.num_processes:
            raise ConfigError(f"--process_id={self.process_id} must be in 0..{self.num_processes - 1}")


def initialize(cluster: ClusterFlags) -> str | None:
    """Joins the cluster (when asked) and returns a line naming this process, else None.

    Must run before anything touches a JAX backend. On CPU it selects gloo
    collectives, which cross-process computations need there.
    """
    cluster.validate()
    if not (cluster.multihost or cluster.explicit):
        return None
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if cluster.explicit:
        jax.distributed.initialize(coordinator_address=cluster.coordinator_address,
                                   num_processes=cluster.num_processes,
                                   process_id=cluster.process_id)
    else:
        jax.distributed.initialize()
    return (f"process {jax.process_index()} of {jax.process_count()}: "
            f"{jax.local_device_count()} local of {jax.device_count()} devices")


def is_writer() -> bool:
    """Whether this process writes the run directory's shared files (process 0)."""
    import jax  # pylint: disable=g-import-not-at-top
    return jax.process_index() == 0
