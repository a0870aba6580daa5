r"""Seconds per MAML meta-step, compile time, peak memory and achieved GFLOP/s.

One configuration per process (peak RSS is per process):

    python -m benchmarks.maml_speed --config=omniglot --steps=20
    python -m benchmarks.maml_speed --config=omniglot --first_order --strategy=loop_xla

The last line printed is one JSON object with at least `sec_per_step` (median
over `--steps` steps after `--warmup` steps), `compile_s`, `peak_rss_mb` and
`gflops_per_s` (XLA's cost analysis of the compiled step divided by
`sec_per_step`). `--table` runs every (config, order, strategy) of a list in
subprocesses and prints a markdown table plus a JSON list.

Configs (random data of the right shapes, fixed for the run, as the PyTorch
peer in ../shared/peers/torch_maml.py):
  sinusoid       MLP 1-40-40-1, 25 tasks, 10 support + 10 query, 1 step, alpha 0.01
  omniglot       the peer's: Conv4-64 (flatten head), 5-way, 32 tasks, 5 support +
                 75 query, 1 step, alpha 0.4
  omniglot_train MAML's 5-way 1-shot training step: 32 tasks, 5 support + 5 query
  omniglot20     MAML's 20-way 1-shot training step: 16 tasks, 20 support + 20 query,
                 5 inner steps in a lax.scan (as its flagfile), alpha 0.1
"""

import dataclasses
import json
import resource
import statistics
import sys
import time

from absl import app
from absl import flags

from benchmarks import cpu

CONFIGS = {
    "sinusoid": dict(tasks=25, ways=1, support=10, query=10, inner_lr=0.01, inner_steps=1),
    "omniglot": dict(tasks=32, ways=5, support=5, query=75, inner_lr=0.4, inner_steps=1),
    "omniglot_train": dict(tasks=32, ways=5, support=5, query=5, inner_lr=0.4, inner_steps=1),
    # Scanned inner steps, as experiments/flags/maml/omniglot_20way_*.flags: half the compile
    # time of the unrolled loop and no slower (docs/results.md).
    "omniglot20": dict(tasks=16, ways=20, support=20, query=20, inner_lr=0.1, inner_steps=5,
                       scan=True),
}

flags.DEFINE_enum("config", "omniglot", list(CONFIGS), "Benchmark configuration.")
flags.DEFINE_bool("first_order", False, "First-order MAML.")
flags.DEFINE_string("strategy", "auto", "Task map and convolution (meta.task_map.STRATEGIES).")
flags.DEFINE_integer("steps", 20, "Timed meta-steps (median reported).")
flags.DEFINE_integer("warmup", 3, "Untimed meta-steps after compilation.")
flags.DEFINE_integer("inner_steps", None, "Override the config's inner steps.")
flags.DEFINE_bool("remat", False, "jax.checkpoint around each inner step (runs them in a lax.scan).")
flags.DEFINE_bool("scan", None, "Inner steps in a lax.scan instead of unrolled (default: the "
                  "config's choice).")
flags.DEFINE_bool("bn_fast_variance", True, "One-pass batch-norm variance (core.networks."
                  "BatchNorm.fast_variance); --nobn_fast_variance times the two-pass one.")
flags.DEFINE_integer("threads", 2, "CPU cores to pin the process to (as the peer).")
flags.DEFINE_bool("malloc_tuning", True,
                  "Restart with glibc malloc tunables, as the entry points do (core/runtime.py).")
flags.DEFINE_bool("table", False, "Run a grid of configurations in subprocesses.")
flags.DEFINE_list("table_configs", ["sinusoid", "omniglot", "omniglot_train", "omniglot20"],
                  "Configs of --table.")
flags.DEFINE_list("table_strategies", ["vmap_im2col", "vmap_xla", "loop_xla"],
                  "Strategies of --table (vmap_xla is skipped for conv configs unless listed "
                  "in --table_slow).")
flags.DEFINE_list("table_slow", [], "Strategies to run on conv configs even though slow.")
FLAGS = flags.FLAGS


def _random_tasks(cfg: dict, image: bool):
    import jax.numpy as jnp
    import numpy as np

    from core.datasets.episodes import Episode
    from core.datasets.fake import random_image_episodes
    rng = np.random.default_rng(0)
    b, s, q = cfg["tasks"], cfg["support"], cfg["query"]
    if not image:
        return Episode(jnp.asarray(rng.uniform(-5, 5, (b, s, 1)), jnp.float32),
                       jnp.asarray(rng.normal(size=(b, s, 1)), jnp.float32),
                       jnp.asarray(rng.uniform(-5, 5, (b, q, 1)), jnp.float32),
                       jnp.asarray(rng.normal(size=(b, q, 1)), jnp.float32))
    return random_image_episodes(b, cfg["ways"], s, q)


def matmul_peak_gflops(size: int = 2048, reps: int = 20) -> float:
    """GFLOP/s of one jitted f32 [size, size] @ [size, size] matmul (median of `reps`).

    This is the yardstick for `gflops_per_s`: what XLA:CPU's best kernel reaches
    on this machine with the same threads.
    """
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        matmul(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(times) / 1e9


def measure(config: str, first_order: bool, strategy: str, steps: int, warmup: int,
            inner_steps: int | None, remat: bool, scan: bool | None = None,
            bn_fast_variance: bool = True) -> dict:
    """Compiles and times one jitted meta-step (meta-gradient + Adam).

    `inner_steps` and `scan` override the config's when not None;
    `bn_fast_variance` is the Conv4's `BatchNorm.fast_variance`.
    """
    import jax

    from core import networks
    from core import runtime
    from core import train_state
    from core.losses import classification_loss, regression_loss, split_variables
    from meta import maml
    from meta import task_map as task_map_lib

    cfg = dict(CONFIGS[config])
    if inner_steps is not None:
        cfg["inner_steps"] = inner_steps
    if scan is None:
        scan = cfg.get("scan", False)
    task_map, conv_impl = task_map_lib.resolve_strategy(strategy)
    image = config != "sinusoid"
    if image:
        model = networks.omniglot_conv4(cfg["ways"], conv_impl=conv_impl,
                                        spatial_pool="flatten",
                                        bn_fast_variance=bn_fast_variance)
        loss_fn = classification_loss(model)
    else:
        model = networks.sinusoid_mlp()
        loss_fn = regression_loss(model)
    tasks = _random_tasks(cfg, image)
    params, model_state = split_variables(model.init(jax.random.PRNGKey(0), tasks.support_x[0]))
    optimizer = maml.outer_optimizer(1e-3)
    state = train_state.create(params, model_state, optimizer)
    mcfg = maml.MamlConfig(inner_lr=cfg["inner_lr"], inner_steps=cfg["inner_steps"],
                           first_order=first_order, remat=remat, scan=scan)
    def jit_step(maml_config: maml.MamlConfig):
        return jax.jit(maml.make_meta_train_step(loss_fn, optimizer, maml_config, task_map))

    step = jit_step(mcfg)

    t0 = time.perf_counter()
    compiled = step.lower(state, tasks).compile()
    compile_s = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    flops = _flops(compiled.cost_analysis())

    for _ in range(warmup):
        state, metrics = compiled(state, tasks)
    jax.block_until_ready(state)
    times, faults = [], []
    for _ in range(steps):
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        state, metrics = compiled(state, tasks)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0)
    sec = statistics.median(times)
    if mcfg.scanned:
        # XLA's cost analysis counts a while-loop body once: count the same math
        # unrolled, from the lowered (not compiled) program. Remat's recomputation
        # is not counted, so GFLOP/s is then the rate of useful FLOPs.
        unrolled = dataclasses.replace(mcfg, scan=False, remat=False)
        flops = _flops(jit_step(unrolled).lower(state, tasks).cost_analysis())
    return {
        "config": config, "order": "first" if first_order else "second",
        "strategy": strategy, "task_map": task_map, "conv_impl": conv_impl,
        "inner_steps": cfg["inner_steps"], "remat": remat, "scan": mcfg.scanned,
        "bn_fast_variance": bn_fast_variance if image else None, "backend": jax.default_backend(),
        "sec_per_step": sec, "min_sec_per_step": min(times), "compile_s": compile_s,
        "gflop_per_step": flops / 1e9,
        "gflops_per_s": flops / 1e9 / sec,
        "matmul_peak_gflops": matmul_peak_gflops(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        # XLA's own buffers for one step (compiler memory excluded, unlike peak RSS).
        "xla_temp_mb": memory.temp_size_in_bytes / 2**20 if memory else None,
        "xla_peak_mb": getattr(memory, "peak_memory_in_bytes", 0) / 2**20 if memory else None,
        # Page faults per step: ~250k without the malloc tunables (core/runtime.py).
        "minor_faults_per_step": statistics.median(faults),
        "malloc_tuned": runtime.malloc_tunables_active(),
        "steps": steps, "loss": float(metrics["loss"]),
    }


def _flops(cost) -> float:
    """The FLOP count of a (list of) XLA cost analysis dict(s); 0 when absent."""
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def _table() -> None:
    rows = []
    for config in FLAGS.table_configs:
        for first_order in (False, True):
            for strategy in FLAGS.table_strategies:
                if (config != "sinusoid" and strategy.endswith("_xla")
                        and strategy.startswith("vmap") and strategy not in FLAGS.table_slow):
                    continue
                if config == "sinusoid" and not strategy.endswith("im2col"):
                    continue  # no convolutions: every strategy is the same vmap
                cmd = [sys.executable, "-m", "benchmarks.maml_speed", f"--config={config}",
                       f"--strategy={strategy}", f"--steps={FLAGS.steps}",
                       f"--warmup={FLAGS.warmup}", f"--threads={FLAGS.threads}",
                       f"--malloc_tuning={FLAGS.malloc_tuning}",
                       "--first_order" if first_order else "--nofirst_order"]
                row = cpu.measure_in_subprocess(cmd)
                if row is None:
                    continue
                rows.append(row)
                print(_row(rows[-1]), flush=True)
    print("\n" + _header() + "\n" + "\n".join(_row(r) for r in rows))
    print(json.dumps(rows))


def _header() -> str:
    return ("| config | order | strategy | s/step | compile s | GFLOP/step | GFLOP/s "
            "| matmul peak GFLOP/s | peak RSS MB | XLA temp MB |\n|---|---|---|---|---|---|---|---|---|---|")


def _row(r: dict) -> str:
    return (f"| {r['config']} | {r['order']} | {r['strategy']} ({r['task_map']}, "
            f"{r['conv_impl']}) | {r['sec_per_step']:.4f} | {r['compile_s']:.1f} | "
            f"{_num(r['gflop_per_step'], 2)} | {_num(r['gflops_per_s'], 1)} | "
            f"{r['matmul_peak_gflops']:.0f} | {r['peak_rss_mb']:.0f} | {_num(r['xla_temp_mb'], 0)} |")


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv):
    del argv
    cpu.run_main(FLAGS, _table,
                 lambda: measure(FLAGS.config, FLAGS.first_order, FLAGS.strategy, FLAGS.steps,
                                 FLAGS.warmup, FLAGS.inner_steps, FLAGS.remat, FLAGS.scan,
                                 FLAGS.bn_fast_variance),
                 lambda result: _header() + "\n" + _row(result))


if __name__ == "__main__":
    app.run(main)
