r"""Milliseconds per multi-task train step and peak memory, per method and number of tasks.

One measurement per process (peak RSS is per process):

    python -m benchmarks.mtl_speed --config=multimnist --method=upgrad --steps=20
    python -m benchmarks.mtl_speed --config=regression --tasks=40 --method=famo

The last line printed is one JSON object with `ms_per_step` (median over
`--steps` steps after `--warmup`), `compile_s` and `peak_rss_mb`. `--table`
runs every (config, k, method) of a grid in subprocesses and prints a
markdown table plus a JSON list: loss weightings should stay flat in k,
gradient aggregators grow with it.

With `--table --peer_python=/tmp/peervenv/bin/python` every cell is timed against
the TorchJD peer (`../shared/peers/torchjd_mtl.py`, its own venv; see
../shared/peers/README.md), alternately: per round and cell, the peer, then ours,
each in its own process. Every round is printed, then the medians over
`--rounds` and the ratio peer / ours. The peer runs its fastest setting
(`--peer_adam`, default fused) and inherits this process's environment, so with
--malloc_tuning it gets the same GLIBC_TUNABLES (equal terms):

    python -m benchmarks.mtl_speed --table --peer_python=/tmp/peervenv/bin/python --rounds=3

Configs (random data of the right shapes, fixed for the run, as the TorchJD
peer in ../shared/peers/torchjd_mtl.py; Adam 1e-3):
  multimnist   MultiLeNet (trunk conv 1->10 k5, pool, conv 10->20 k5, dropout2d, pool,
               fc 320->50; heads fc 50->50->10), 2 tasks, 1x28x28, batch --batch
  regression   FAMO-style: trunk MLP 64-128-128 ReLU on 20 features, --tasks linear heads,
               MSE per task, batch --batch
"""

import json
import os
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
flags.DEFINE_integer("cpu_devices", 1, "Split the CPU into this many XLA devices "
                     "(--xla_force_host_platform_device_count) and shard the batch over them.")
flags.DEFINE_bool("malloc_tuning", True,
                  "Restart with glibc malloc tunables, as the entry points do (core/runtime.py).")
flags.DEFINE_bool("table", False, "Run a grid of measurements in subprocesses.")
flags.DEFINE_list("table_methods", ["equal", "famo", "mean", "mgda", "upgrad", "pcgrad",
                                    "cagrad", "nash_mtl", "imtl_g", "aligned_mtl"],
                  "Methods of --table.")
flags.DEFINE_list("table_tasks", ["10", "40", "100"], "Task counts of --table (regression).")
flags.DEFINE_string("peer_python", "", "Python of the TorchJD peer's venv; empty: no peer.")
flags.DEFINE_string("peer_script", os.path.normpath(os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "peers", "torchjd_mtl.py")),
    "The peer script.")
flags.DEFINE_string("peer_adam", "fused", "The peer's --adam (default, fused or foreach).")
flags.DEFINE_integer("rounds", 1, "Rounds of --table (each cell once per round).")
FLAGS = flags.FLAGS

# Our --method -> the peer's (TorchJD's aggregators; `plain` is loss.backward() of the mean).
PEER_METHODS = {"equal": "plain", "mean": "mean", "mgda": "mgda", "upgrad": "upgrad",
                "pcgrad": "pcgrad", "cagrad": "cagrad", "nash_mtl": "nashmtl",
                "imtl_g": "imtlg", "aligned_mtl": "alignedmtl", "dualproj": "dualproj",
                "config": "config"}


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
            conv_impl: str, cpu_devices: int = 1) -> dict:
    """Times the jitted multi-task step of one (config, method, k)."""
    if cpu_devices > 1:  # before jax is imported
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={cpu_devices}")
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
    mesh = mesh_lib.make_mesh(jax.devices()[:cpu_devices])
    state = mesh_lib.put_replicated(train_state.create(params, model_state, optimizer, extra),
                                    mesh)
    step = train_state.jit_step(step_lib.make_train_step(model, tasks, method, optimizer, 0),
                                mesh)
    placed = mesh_lib.put_batch(batch_data, mesh)
    _, state, metrics, compile_s, times = cpu.time_step(step, state, placed, steps, warmup)
    return {"config": config, "method": method_name, "tasks": len(tasks), "batch": batch,
            "conv_impl": conv_impl if config == "multimnist" else None,
            "cpu_devices": cpu_devices,
            **cpu.step_stats(times, compile_s), "loss": float(metrics["loss"]), "steps": steps}


def _header() -> str:
    return ("| config | k | method | ms/step | min ms | compile s | peak RSS MB | peer ms | "
            "peer / ours |\n|---|---|---|---|---|---|---|---|---|")


def _row(r: dict, peer: dict | None = None) -> str:
    ratio = (f"{peer['ms_per_step']:.2f} | {peer['ms_per_step'] / r['ms_per_step']:.2f}x"
             if peer else "- | -")
    return (f"| {r['config']} | {r['tasks']} | {r['method']} | {r['ms_per_step']:.2f} | "
            f"{r['ms_per_step_min']:.2f} | {r['compile_s']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{ratio} |")


def _own(config: str, k: int, method: str) -> dict | None:
    return cpu.measure_in_subprocess([
        sys.executable, "-m", "benchmarks.mtl_speed", f"--config={config}",
        f"--method={method}", f"--tasks={k}", f"--batch={FLAGS.batch}", f"--steps={FLAGS.steps}",
        f"--warmup={FLAGS.warmup}", f"--threads={FLAGS.threads}",
        f"--conv_impl={FLAGS.conv_impl}", f"--malloc_tuning={FLAGS.malloc_tuning}",
        f"--cpu_devices={FLAGS.cpu_devices}"])


def _peer(config: str, k: int, method: str) -> dict | None:
    """One run of the peer, as a row with `ms_per_step`; None when it has no such method."""
    if not FLAGS.peer_python or method not in PEER_METHODS:
        return None
    row = cpu.measure_in_subprocess([
        FLAGS.peer_python, FLAGS.peer_script, "--config", config, "--tasks", str(k),
        "--method", PEER_METHODS[method], "--batch", str(FLAGS.batch), "--steps",
        str(FLAGS.steps), "--warmup", str(FLAGS.warmup + 1),  # + its first step
        "--threads", str(FLAGS.threads), "--adam", FLAGS.peer_adam])
    if row is None:
        return None
    return dict(row, ms_per_step=1000 * row["sec_per_step"], ms_per_step_min=1000 * row["min"])


def _table() -> None:
    grid = [("multimnist", 2)] + [("regression", int(k)) for k in FLAGS.table_tasks]
    rows = []
    for round_ in range(FLAGS.rounds):
        for config, k in grid:
            for method in FLAGS.table_methods:
                peer = _peer(config, k, method)
                ours = _own(config, k, method)
                if ours is None:
                    continue
                rows.append({"round": round_, "ours": ours, "peer": peer})
                print(f"round {round_} " + _row(ours, peer), flush=True)
    print("\n" + _header())
    for config, k in grid:
        for method in FLAGS.table_methods:
            cell = [r for r in rows if r["ours"]["config"] == config
                    and r["ours"]["tasks"] == k and r["ours"]["method"] == method]
            if cell:
                ours = cpu.median_row([r["ours"] for r in cell])
                peers = [r["peer"] for r in cell if r["peer"] is not None]
                print(_row(ours, cpu.median_row(peers) if peers else None))
    print(f"(medians over {FLAGS.rounds} round(s), batch {FLAGS.batch}, {FLAGS.threads} threads)")
    print(json.dumps(rows))


def main(argv):
    del argv
    cpu.run_main(FLAGS, _table,
                 lambda: measure(FLAGS.config, FLAGS.method, FLAGS.tasks, FLAGS.batch,
                                 FLAGS.steps, FLAGS.warmup, FLAGS.conv_impl, FLAGS.cpu_devices),
                 lambda result: _header() + "\n" + _row(result))


if __name__ == "__main__":
    app.run(main)
