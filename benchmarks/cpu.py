"""Process set-up, step timing and subprocess measurement shared by the speed benchmarks."""

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable


def run_main(flag_values, table: Callable[[], None], measure: Callable[[], dict],
             render: Callable[[dict], str]) -> None:
    """The body of a benchmark's `main`: set up the process, then `--table` or one measurement.

    Restarts with the glibc malloc tunables unless `--nomalloc_tuning`
    (`core.runtime`), pins the process to `--threads` cores, then runs
    `table()` with `--table`, or prints `render(measure())` and, last, the
    measurement as one JSON line.
    """
    from core import runtime
    runtime.reexec_with_malloc_tunables(flag_values.malloc_tuning)
    pin_threads(flag_values.threads)
    if flag_values.table:
        table()
        return
    result = measure()
    print(render(result))
    print(json.dumps(result))


def pin_threads(threads: int) -> None:
    """Pins the process to its first `threads` CPUs, as the PyTorch peers are run."""
    try:
        cpus = sorted(os.sched_getaffinity(0))[:threads]
        os.sched_setaffinity(0, set(cpus))
    except (AttributeError, OSError):
        pass


def time_step(step, state, batch, steps: int, warmup: int):
    """Compiles a jitted `step(state, batch)`, runs `warmup` untimed steps, then times `steps`.

    Each timed step is waited for (`jax.block_until_ready`), so a time is one
    step's latency on a fixed batch.

    Returns:
      (compiled step, state, metrics of the last step, compile seconds, step times in seconds).
    """
    import jax

    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    return compiled, state, metrics, compile_s, times


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_stats(times: list[float], compile_s: float) -> dict:
    """The JSON keys every step benchmark reports: median and min ms, compile s, peak RSS."""
    return {"ms_per_step": 1000 * statistics.median(times),
            "ms_per_step_min": 1000 * min(times), "compile_s": compile_s,
            "peak_rss_mb": peak_rss_mb()}


def measure_in_subprocess(cmd: list[str], env: dict[str, str] | None = None) -> dict | None:
    """Runs one measurement process; its last JSON line of stdout, or None (reported) if it failed.

    One process per measurement keeps each row's peak RSS its own. `env`
    replaces the environment (default: this process's).
    """
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        print(f"failed: {' '.join(cmd)}\n{out.stderr[-1000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def median_row(rows: list[dict]) -> dict | None:
    """The row of median `ms_per_step` (the lower middle one for an even count), or None."""
    found = sorted(rows, key=lambda r: r["ms_per_step"])
    return found[(len(found) - 1) // 2] if found else None
