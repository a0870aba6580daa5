"""The multi-task benchmarks: their splits and their tasks.

Every benchmark gives train / val / test `Arrays` and the `Task` of each
head. The validation split is carved from the training set by a seeded
permutation (`--val_size`), never from the test set.

    multi_mnist          two MNIST digits on one canvas; tasks left, right (10 classes each)
    multi_fashion        the same with Fashion-MNIST
    multi_fashion_mnist  Fashion-MNIST left (--data_dir), MNIST right (--second_data_dir)
    rotated_mnist        an MNIST digit rotated by a random angle: digit (10 classes) and
                         angle (regression, degrees), one classification and one regression
                         head on one input, like gender and age from one face
    school               139 schools' exam scores (regression): each example belongs to one
                         school, so the data are task-indexed (see below)
    regression           FAMO's many-task linear regression: X ~ N(0, I_20), Y ~ N(0, I_K),
                         --num_tasks tasks (generated; no data)

Task-indexed data (School): `y = {"score": [n], "task": [n]}`, and task t's
loss is the mean over the examples of the batch whose `task` is t
(`TASK_INDEX`); every head sees every example, only its own examples count.
"""

import dataclasses

import numpy as np

from core.datasets import arrays
from core.errors import ConfigError
from mtl.tasks import Task

BENCHMARKS = ("multi_mnist", "multi_fashion", "multi_fashion_mnist", "rotated_mnist", "school",
              "regression")
TASK_INDEX = "task"
SCHOOL_TARGET = "score"
_REGRESSION_EXAMPLES, _REGRESSION_FEATURES = 1000, 20


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark's data and tasks.

    Attributes:
      splits: {'train', 'val', 'test'} -> Arrays.
      tasks: task name -> Task, in head order.
      task_indexed: True when each example belongs to one task (`TASK_INDEX`).
    """

    splits: dict[str, arrays.Arrays]
    tasks: dict[str, Task]
    task_indexed: bool = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.splits["train"].x.shape[1:])

    @property
    def task_ids(self) -> dict[str, int] | None:
        """Task-indexed data: task name -> its id in `y[TASK_INDEX]`; None otherwise."""
        if not self.task_indexed:
            return None
        return {name: int(name.removeprefix("school")) for name in self.tasks}

    @property
    def target_key(self) -> str | None:
        """Task-indexed data: the target every head predicts; None otherwise."""
        return SCHOOL_TARGET if self.task_indexed else None


def school_task_name(index: int) -> str:
    return f"school{index:03d}"


def _digit_tasks(*names: str) -> dict[str, Task]:
    return {name: Task(name, "classification", 10) for name in names}


def _load(name: str, data_dir: str | None, second_data_dir: str | None, seed: int,
          num_tasks: int, regression_loss: str) -> tuple[dict[str, arrays.Arrays], dict, bool]:
    if name != "regression" and not data_dir:
        raise ConfigError(f"--data_dir is required for --benchmark={name}: the folder that "
                          f"holds the dataset's official files")
    if name.startswith("multi_"):
        from core.datasets.multi_mnist import load_multi_mnist
        splits = load_multi_mnist(data_dir, name, seed=seed, second_data_dir=second_data_dir)
        return splits, _digit_tasks("left", "right"), False
    if name == "rotated_mnist":
        from core.datasets.rotated_mnist import load_rotated_mnist
        tasks = {"digit": Task("digit", "classification", 10),
                 "angle": Task("angle", "regression", 1, loss=regression_loss)}
        return load_rotated_mnist(data_dir, seed=seed), tasks, False
    if name == "school":
        from core.datasets.school import load_school
        splits = load_school(data_dir, seed=seed)
        count = int(splits["train"].y[TASK_INDEX].max()) + 1
        tasks = {school_task_name(t): Task(school_task_name(t), "regression", 1,
                                           loss=regression_loss) for t in range(count)}
        return splits, tasks, True
    if name == "regression":
        return _regression_splits(num_tasks, seed), {
            f"y{k}": Task(f"y{k}", "regression", 1, loss=regression_loss)
            for k in range(num_tasks)}, False
    raise ConfigError(f"unknown --benchmark={name!r}; expected one of {', '.join(BENCHMARKS)}")


def _regression_splits(num_tasks: int, seed: int) -> dict[str, arrays.Arrays]:
    """FAMO's many-task regression (reference §2.5.3), with a held-out test set."""
    rng = np.random.default_rng([seed, 7])

    def sample(n):
        x = rng.standard_normal((n, _REGRESSION_FEATURES)).astype(np.float32)
        y = rng.standard_normal((n, num_tasks)).astype(np.float32)
        return arrays.Arrays(x=x, y={f"y{k}": y[:, k] for k in range(num_tasks)})

    return {"train": sample(_REGRESSION_EXAMPLES), "test": sample(_REGRESSION_EXAMPLES // 4)}


def load_benchmark(name: str, *, data_dir: str | None, second_data_dir: str | None = None,
                   seed: int = 0, val_size: int, num_tasks: int = 2,
                   regression_loss: str = "mse", only_tasks: tuple[str, ...] = ()) -> Benchmark:
    """Loads a benchmark (see the module docstring).

    Args:
      name: one of `BENCHMARKS`.
      data_dir: the folder with the dataset's official files.
      second_data_dir: the second dataset's folder (multi_fashion_mnist: MNIST).
      seed: seed of the generated pairs / angles / splits (data, not initialisation).
      val_size: validation examples carved from the training split.
      num_tasks: tasks of the generated regression benchmark.
      regression_loss: 'mse' or 'l1' for the regression heads.
      only_tasks: train only these tasks (single-task baselines: one task); all when empty.

    Returns:
      The `Benchmark`.
    """
    splits, tasks, task_indexed = _load(name, data_dir, second_data_dir, seed, num_tasks,
                                        regression_loss)
    if only_tasks:
        unknown = [t for t in only_tasks if t not in tasks]
        if unknown:
            raise ConfigError(f"--tasks names {', '.join(unknown)}, which --benchmark={name} "
                              f"does not have; its tasks are {', '.join(tasks)}")
        tasks = {t: tasks[t] for t in only_tasks}
        if task_indexed:  # keep only the examples of the chosen tasks
            splits = {name: _of_tasks(split, tasks) for name, split in splits.items()}
    train, val = arrays.split_validation(splits["train"], val_size, seed=seed)
    return Benchmark(splits={"train": train, "val": val, "test": splits["test"]}, tasks=tasks,
                     task_indexed=task_indexed)


def _of_tasks(split: arrays.Arrays, tasks: dict[str, Task]) -> arrays.Arrays:
    """The examples of task-indexed data that belong to `tasks`."""
    ids = [int(name.removeprefix("school")) for name in tasks]
    return split.take(np.flatnonzero(np.isin(split.y[TASK_INDEX], ids)))
