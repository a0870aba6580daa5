"""The fake experiment's run: flags in, metrics.jsonl and results.json out (no JAX).

Resumes like a real run: validation lines already in metrics.jsonl are kept and
the run goes on after them. Every start appends its pid and flags to attempts.jsonl.
"""

import json
import os
import sys
import time


def _read_flags(argv):
    values = {}
    for arg in argv:
        if arg.startswith("--flagfile="):
            with open(arg.split("=", 1)[1]) as f:
                lines = [l.strip() for l in f if l.strip() and not l.startswith("#")]
            values.update(_read_flags(lines))
        elif arg.startswith("--no") and "=" not in arg:
            values[arg[4:]] = "false"
        elif arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            values[key] = value
    return values


def main():
    flags = _read_flags(sys.argv[1:])
    workdir = flags["workdir"]
    x, y = float(flags.get("x", 0.5)), float(flags.get("y", 0.0))
    mode, steps = flags.get("mode", "a"), int(flags.get("num_steps", 4))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "attempts.jsonl"), "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "flags": flags}) + "\n")
    if int(flags.get("exit_code", 0)):
        print("error: fake refusal", file=sys.stderr)
        sys.exit(int(flags["exit_code"]))
    value = -(x - 0.3) ** 2 - y ** 2 - (1.0 if mode == "b" else 0.0)
    path = os.path.join(workdir, "metrics.jsonl")
    done = 0
    if os.path.exists(path):
        with open(path) as f:
            done = max([json.loads(l)["step"] for l in f if l.endswith("\n")] or [0])
    with open(path, "a") as f:
        for step in range(done + 1, steps + 1):
            time.sleep(float(flags.get("step_seconds", 0)))
            f.write(json.dumps({"step": step, "split": "val", "time": time.time(),
                                "score": value}) + "\n")
            f.flush()
    results = {"steps": steps, "wall_seconds": 0.01 * steps, "best_step": 1, "best_val": value,
               "stopped_early": False, "test": {"accuracy": value + 1.0}, "config": flags}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
