"""Where a MAML run's tasks come from: training meta-batches and the fixed evaluation tasks.

Sinusoid tasks are sampled inside the jitted train step from counter-based
keys (no host round trip); Omniglot and mini-ImageNet episodes are drawn on
the host by `core.datasets.episodes.EpisodeSampler`, each process building
only the rows of a meta-batch that live on its devices. Every split's tasks
are a function of (seed, index), so a resumed run sees the tasks it would
have seen.
"""

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable

import jax
import numpy as np

from core import mesh as mesh_lib
from core.datasets import sinusoid
from core.datasets.episodes import EpisodeSampler, EpisodeSpec
from core.datasets.miniimagenet import load_miniimagenet
from core.datasets.omniglot import ROTATIONS, load_omniglot

if TYPE_CHECKING:
    from meta.runner import MamlRunConfig

# Seeds of the fixed validation and test tasks are offset from --eval_seed so they never
# coincide with the training seed's stream.
_VAL_SEED_OFFSET, _TEST_SEED_OFFSET = 10_000, 20_000


@dataclasses.dataclass
class Episodes:
    """Where a run's tasks come from.

    Attributes:
      train: step -> what the jitted train step is given for that step.
      sample_in_step: index -> tasks, traced inside the train step (sinusoid
        tasks are sampled on the device, without a host round trip); None
        when `train` gives the tasks themselves.
      eval: 'val' / 'test' -> (index -> a batch of fixed tasks, on the mesh).
    """

    train: Callable[[int], Any]
    sample_in_step: Callable[[jax.Array], Any] | None
    eval: dict[str, Callable[[int], Any]]


def _query(config: "MamlRunConfig", split: str) -> int:
    if split == "train" or config.eval_query is None:
        return config.query
    return config.eval_query


def _step_index(step: int) -> np.int32:
    """The train step's argument when it samples its own tasks: the step index."""
    return np.int32(step)


def sinusoid_episodes(config: "MamlRunConfig", mesh) -> Episodes:
    """Sinusoid tasks, sampled on the device from counter-based keys."""
    eval_root = jax.random.PRNGKey(_VAL_SEED_OFFSET + config.eval_seed)
    keys = {"train": jax.random.fold_in(jax.random.PRNGKey(config.seed), 0),
            "val": jax.random.fold_in(eval_root, 1),
            "test": jax.random.fold_in(eval_root, 2)}
    batch_sharding = mesh_lib.batch_sharded(mesh)

    def sample(split: str, index):
        return sinusoid.sample_tasks(jax.random.fold_in(keys[split], index),
                                     config.meta_batch_size, config.shots, _query(config, split))

    def sample_train(index):
        return jax.lax.with_sharding_constraint(sample("train", index), batch_sharding)

    return Episodes(train=_step_index, sample_in_step=sample_train, eval={
        split: jax.jit(functools.partial(sample, split), out_shardings=batch_sharding)
        for split in ("val", "test")})


def image_episodes(config: "MamlRunConfig", mesh) -> Episodes:
    """N-way K-shot episodes of Omniglot or mini-ImageNet, placed on the mesh."""
    fidelity = config.fidelity
    group_size = 1
    if config.dataset == "omniglot":
        splits = load_omniglot(config.data_dir, config.resolved_cache_dir,
                               split_sizes=tuple(config.omniglot_split),
                               resize=fidelity.omniglot_resize)
        # Classes 4k..4k+3 are character k's rotations (load_omniglot).
        group_size = len(ROTATIONS) if fidelity.rotation_sampling == "per_episode" else 1
    else:
        splits = load_miniimagenet(config.data_dir, config.resolved_cache_dir)
    seeds = {"train": config.seed, "val": _VAL_SEED_OFFSET + config.eval_seed,
             "test": _TEST_SEED_OFFSET + config.eval_seed}
    fns = {}
    for split, seed in seeds.items():
        spec = EpisodeSpec(ways=config.ways, shots=config.shots, query=_query(config, split))
        sampler = EpisodeSampler(splits[split], spec, seed=seed, group_size=group_size)
        fns[split] = functools.partial(_meta_batch, sampler, config.meta_batch_size, mesh)
    return Episodes(train=fns.pop("train"), sample_in_step=None, eval=fns)


def _meta_batch(sampler, batch_size: int, mesh, index: int):
    """Meta-batch `index` on the mesh, each process sampling only its own tasks."""
    return mesh_lib.put_rows(functools.partial(sampler.batch_rows, index, batch_size),
                             batch_size, mesh)


def for_run(config: "MamlRunConfig", mesh) -> Episodes:
    """The run's tasks: sinusoid ones sampled in the step, else image episodes."""
    return (sinusoid_episodes if config.dataset == "sinusoid" else image_episodes)(config, mesh)
