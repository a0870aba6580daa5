r"""Milliseconds per multi-task train step and peak memory, per method and number of tasks.

One measurement per process (peak RSS is per process):

    python -m benchmarks.mtl_speed --config=multimnist --method=upgrad --steps=20
    python -m benchmarks.mtl_speed --config=regression --tasks=40 --method=famo

The last line printed is one JSON object with `ms_per_step` (median over
`--steps` steps after `--warmup`), `compile_s` and `peak_rss_mb`. `--table`
runs every (config, k, method) of a grid in subprocesses and prints a
markdown table plus a JSON list: loss weightings should stay flat in k,
gradient aggregators grow with it.

Configs (random data of the right shapes, fixed for the run, as the TorchJD
peer in ../shared/peers/torchjd_mtl.py; Adam 1e-3):
  multimnist   MultiLeNet (trunk conv 1->10 k5, pool, conv 10->20 k5, dropout2d, pool,
               fc 320->50; heads fc 50->50->10), 2 tasks, 1x28x28, batch --batch
  regression   FAMO-style: trunk MLP 64-128-128 ReLU on 20 features, --tasks linear heads,
               MSE per task, batch --batch
"""

import json
import sys

from absl import app
from absl import flags

from benchmarks import cpu

flags.DEFINE_enum("config", "multimnist", ["multimnist", "regression"], "Model and data.")
flags.DEFINE_string("method", "equal", "A --method of experiments.mtl (mtl/methods.py).")
flags.DEFINE_integer("tasks", 10, "Tasks of --config=regression.")
flags.DEFINE_integer("batch", 256, "Examples per step.")
flags.DEFINE_integer("steps", 20, "Timed steps (median reported).")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_string("conv_impl", "auto", "MultiLeNet convolutions: xla, im2col or auto "
                    "(im2col on CPU).")
flags.DEFINE_integer("threads", 2, "CPU cores to pin the process to (as the peer).")
flags.DEFINE_bool("malloc_tuning", True,
                  "Restart with glibc malloc tunables, as the entry points do (core/runtime.py).")
flags.DEFINE_bool("table", False, "Run a grid of measurements in subprocesses.")
flags.DEFINE_list("table_methods", ["equal", "famo", "mean", "mgda", "upgrad", "pcgrad",
                                    "cagrad", "nash_mtl", "imtl_g", "aligned_mtl"],
                  "Methods of --table.")
flags.DEFINE_list("table_tasks", ["10", "40", "100"], "Task counts of --table (regression).")
FLAGS = flags.FLAGS


def _problem(config: str, k: int, batch: int, conv_impl: str):
    """(model, tasks, batch) with random data of the config's shapes."""
    import numpy as np

    from core import networks
    from mtl.tasks import Task
    rng = np.random.default_rng(0)
    if config == "multimnist":
        tasks = {n: Task(n, "classification", 10) for n in ("left", "right")}
        model = networks.TrunkAndHeads(networks.MultiLeNetTrunk(conv_impl=conv_impl),
                                       {n: 10 for n in tasks}, head_hidden=(50,))
        x = rng.uniform(size=(batch, 28, 28, 1)).astype(np.float32)
        y = {n: rng.integers(0, 10, batch).astype(np.int32) for n in tasks}
    else:
        tasks = {f"y{i}": Task(f"y{i}", "regression", 1) for i in range(k)}
        model = networks.TrunkAndHeads(networks.MLPTrunk(hidden=(64, 128, 128)),
                                       {n: 1 for n in tasks})
        x = rng.normal(size=(batch, 20)).astype(np.float32)
        y = {n: rng.normal(size=batch).astype(np.float32) for n in tasks}
    return model, tasks, {"x": x, "y": y}


def measure(config: str, method_name: str, k: int, batch: int, steps: int, warmup: int,
            conv_impl: str) -> dict:
    """Times the jitted multi-task step of one (config, method, k)."""
    import jax
    import optax

    from core import conv
    from core import mesh as mesh_lib
    from core import train_state
    from core.losses import split_variables
    from mtl import methods as methods_lib
    from mtl import step as step_lib
    if conv_impl == "auto":
        conv_impl = conv.default_conv_impl()
    model, tasks, batch_data = _problem(config, k, batch, conv_impl)
    options = {"weights": (), "dwa_temperature": 2.0, "weighting_lr": 1e-3,
               "gradnorm_alpha": 1.5, "famo_lr": 0.025, "famo_gamma": 1e-3, "cagrad_c": 0.4,
               "mgda_normalization": "none"}
    method = methods_lib.make_method(method_name, num_tasks=len(tasks), steps_per_epoch=100,
                                     task_indexed=False, options=options)
    params, model_state = split_variables(
        model.init(jax.random.PRNGKey(0), batch_data["x"][:1], train=False))
    optimizer = optax.adam(1e-3)
    extra = method.init_state(len(tasks))
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    state = mesh_lib.put_replicated(train_state.create(params, model_state, optimizer, extra),
                                    mesh)
    step = train_state.jit_step(step_lib.make_train_step(model, tasks, method, optimizer, 0),
                                mesh)
    placed = mesh_lib.put_batch(batch_data, mesh)
    _, state, metrics, compile_s, times = cpu.time_step(step, state, placed, steps, warmup)
    return {"config": config, "method": method_name, "tasks": len(tasks), "batch": batch,
            "conv_impl": conv_impl if config == "multimnist" else None,
            **cpu.step_stats(times, compile_s), "loss": float(metrics["loss"]), "steps": steps}


def _header() -> str:
    return ("| config | k | method | ms/step | min ms | compile s | peak RSS MB |\n"
            "|---|---|---|---|---|---|---|")


def _row(r: dict) -> str:
    return (f"| {r['config']} | {r['tasks']} | {r['method']} | {r['ms_per_step']:.2f} | "
            f"{r['ms_per_step_min']:.2f} | {r['compile_s']:.1f} | {r['peak_rss_mb']:.0f} |")


def _table() -> None:
    grid = [("multimnist", 2)] + [("regression", int(k)) for k in FLAGS.table_tasks]
    rows = []
    for config, k in grid:
        for method in FLAGS.table_methods:
            cmd = [sys.executable, "-m", "benchmarks.mtl_speed", f"--config={config}",
                   f"--method={method}", f"--tasks={k}", f"--batch={FLAGS.batch}",
                   f"--steps={FLAGS.steps}", f"--warmup={FLAGS.warmup}",
                   f"--threads={FLAGS.threads}", f"--conv_impl={FLAGS.conv_impl}",
                   f"--malloc_tuning={FLAGS.malloc_tuning}"]
            row = cpu.measure_in_subprocess(cmd)
            if row is None:
                continue
            rows.append(row)
            print(_row(rows[-1]), flush=True)
    print("\n" + _header() + "\n" + "\n".join(_row(r) for r in rows))
    print(json.dumps(rows))


def main(argv):
    del argv
    cpu.run_main(FLAGS, _table,
                 lambda: measure(FLAGS.config, FLAGS.method, FLAGS.tasks, FLAGS.batch,
                                 FLAGS.steps, FLAGS.warmup, FLAGS.conv_impl),
                 lambda result: _header() + "\n" + _row(result))


if __name__ == "__main__":
    app.run(main)
