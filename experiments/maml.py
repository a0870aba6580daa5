r"""MAML (Finn et al., 2017): meta-train, select on validation, test.

With no flags this runs the paper's sinusoid regression (K = 10):

    python -m experiments.maml

Each cell of the paper's Table 1 is a flagfile:

    python -m experiments.maml \
      --flagfile=experiments/flags/maml/omniglot_5way_1shot.flags \
      --data_dir=/path/to/omniglot --workdir=runs/omni51

Killing a run and rerunning the same command resumes it from the latest
checkpoint. The run directory ends with `results.json`.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from core import runtime
from core.errors import UserInputError
from meta import runner
from meta import task_map

_D = runner.MamlRunConfig  # defaults live in the typed config

flags.DEFINE_string("workdir", None, "Run directory (default: runs/maml_<dataset>_<ways>w<shots>s).")
flags.DEFINE_string("data_dir", None, "Folder with the official dataset files (read only).")
flags.DEFINE_string("cache_dir", None,
                    "Where decoded datasets are cached (default: ~/.cache/metatransfer).")
flags.DEFINE_list("omniglot_split", ["1100", "100"],
                  "Omniglot characters for training and validation (the rest test); "
                  "default: the MAML split (1200 training characters, the last 100 validate).")
flags.DEFINE_enum("dataset", _D.dataset, list(runner.DATASETS), "Task family.")
flags.DEFINE_integer("ways", _D.ways, "N: classes per task (classification).")
flags.DEFINE_integer("shots", _D.shots, "K: support examples per class (sinusoid: support points).")
flags.DEFINE_integer("query", _D.query, "Query examples per class (sinusoid: query points).")
flags.DEFINE_integer("eval_query", None,
                     "Query examples per class at validation/test (default: --query).")
flags.DEFINE_integer("meta_batch_size", _D.meta_batch_size, "Tasks per meta-update.")
flags.DEFINE_integer("inner_steps", _D.inner_steps, "Inner SGD steps during meta-training.")
flags.DEFINE_integer("eval_inner_steps", _D.eval_inner_steps,
                     "Inner SGD steps at validation and test time.")
flags.DEFINE_integer("select_inner_steps", None,
                     "Model selection uses the validation metric after this many inner steps "
                     "(default: --eval_inner_steps).")
flags.DEFINE_float("inner_lr", _D.inner_lr, "alpha: inner SGD step size.")
flags.DEFINE_float("eval_inner_lr", None, "alpha at test time (default: --inner_lr).")
flags.DEFINE_float("meta_lr", _D.meta_lr, "beta: Adam step size of the meta-update.")
flags.DEFINE_float("grad_clip", None, "Clip meta-gradient entries to [-c, c] (mini-ImageNet: 10).")
flags.DEFINE_integer("num_steps", _D.num_steps, "Meta-training iterations.")
flags.DEFINE_bool("first_order", _D.first_order, "First-order MAML (no second derivatives).")
flags.DEFINE_bool("remat", _D.remat, "Recompute inner-step activations in the backward pass; runs the "
                  "inner steps in a lax.scan (memory flat in --inner_steps).")
flags.DEFINE_bool("scan_inner_loop", _D.scan_inner_loop,
                  "Inner steps in a lax.scan (compile time flat in --inner_steps).")
flags.DEFINE_integer("eval_tasks", _D.eval_tasks, "Fixed test tasks for the final evaluation.")
flags.DEFINE_integer("val_tasks", _D.val_tasks, "Fixed validation tasks for model selection.")
flags.DEFINE_integer("eval_every", _D.eval_every, "Validate every N steps (0: never).")
flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every, "Checkpoint every N steps.")
flags.DEFINE_integer("log_every", _D.log_every, "Log training metrics every N steps.")
flags.DEFINE_integer("seed", _D.seed, "Seed of initialisation and training tasks.")
flags.DEFINE_integer("eval_seed", _D.eval_seed, "Seed of the validation and test tasks.")
flags.DEFINE_enum("bn_mode", _D.bn_mode, ["transductive", "running"],
                  "Batch norm: batch statistics at test too (as the reference code), or "
                  "running statistics at test.")
flags.DEFINE_enum("network", _D.network, list(runner.NETWORKS),
                  "auto: MLP for sinusoid, Conv4 for images.")
flags.DEFINE_enum("strategy", _D.strategy, list(task_map.STRATEGIES),
                  "How tasks are mapped and convolutions computed; auto picks per backend.")
flags.DEFINE_integer("num_devices", None, "Use the first N devices (default: all).")
flags.DEFINE_bool("progress", _D.progress, "Show a progress bar.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() for multi-host runs.")
flags.DEFINE_bool("malloc_tuning", True,
                  "Restart once with glibc malloc tunables that spare XLA:CPU ~250k page "
                  "faults per Omniglot meta-step (core/runtime.py).")

FLAGS = flags.FLAGS


def _split_sizes(values: list[str]) -> tuple[int, int]:
    try:
        train, val = (int(v) for v in values)
    except ValueError:
        raise UserInputError(f"--omniglot_split takes two integers 'train,val', got "
                             f"{','.join(values)!r}") from None
    return train, val


def config_from_flags() -> runner.MamlRunConfig:
    """The typed run config from the parsed flags."""
    workdir = FLAGS.workdir
    if workdir is None:
        if FLAGS.dataset == "sinusoid":
            workdir = f"runs/maml_sinusoid_{FLAGS.shots}shot"
        else:
            workdir = f"runs/maml_{FLAGS.dataset}_{FLAGS.ways}w{FLAGS.shots}s"
    return runner.MamlRunConfig(
        workdir=workdir, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
        cache_dir=FLAGS.cache_dir, omniglot_split=_split_sizes(FLAGS.omniglot_split), ways=FLAGS.ways, shots=FLAGS.shots, query=FLAGS.query,
        eval_query=FLAGS.eval_query,
        meta_batch_size=FLAGS.meta_batch_size, inner_steps=FLAGS.inner_steps,
        eval_inner_steps=FLAGS.eval_inner_steps,
        select_inner_steps=FLAGS.select_inner_steps, inner_lr=FLAGS.inner_lr,
        eval_inner_lr=FLAGS.eval_inner_lr, meta_lr=FLAGS.meta_lr, grad_clip=FLAGS.grad_clip,
        num_steps=FLAGS.num_steps, first_order=FLAGS.first_order, remat=FLAGS.remat,
        scan_inner_loop=FLAGS.scan_inner_loop,
        eval_tasks=FLAGS.eval_tasks, val_tasks=FLAGS.val_tasks, eval_every=FLAGS.eval_every,
        checkpoint_every=FLAGS.checkpoint_every, log_every=FLAGS.log_every, seed=FLAGS.seed,
        eval_seed=FLAGS.eval_seed, bn_mode=FLAGS.bn_mode, network=FLAGS.network,
        strategy=FLAGS.strategy, num_devices=FLAGS.num_devices,
        progress=FLAGS.progress)


def format_results(results: dict) -> str:
    """The closing lines printed on the terminal."""
    test = results["test"]
    unit = test["unit"]
    name = "accuracy" if test["metric"] == "accuracy" else "MSE"
    per_step = ", ".join(f"{k}:{v:.3f}" for k, v in enumerate(test["per_step"]))
    return (f"{name} per inner step on {test['num_tasks']} test tasks: {per_step}\n"
            f"test {name} after {test['inner_steps']} inner steps: "
            f"{test['mean']:.3f}{unit} +/- {test['ci95']:.3f}{unit} (95% CI)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    runtime.reexec_with_malloc_tunables(FLAGS.malloc_tuning)
    if FLAGS.multihost:
        import jax
        jax.distributed.initialize()
    if not FLAGS.is_parsed() or FLAGS["verbosity"].using_default_value:
        # Keep the terminal to the progress bar and the results (--verbosity=0 shows INFO).
        logging.set_verbosity(logging.WARNING)
    try:
        config = config_from_flags()
        print(f"run directory: {config.workdir}", flush=True)
        results = runner.train_and_evaluate(config)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the latest checkpoint",
              file=sys.stderr)
        sys.exit(130)
    print(format_results(results))
    print(f"results: {config.workdir}/results.json")


if __name__ == "__main__":
    app.run(main)
