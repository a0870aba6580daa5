#!/bin/bash
# Runs per hour on this machine: one run on every core against two runs at once, each pinned to
# one core. The same short run of a flagfile (evaluation and checkpoints off) goes first alone,
# then twice side by side; each run's seconds per step come from its metrics.jsonl (the spacing
# of the logged training steps). Nothing else may run meanwhile.
#
#   FLAGFILE=experiments/flags/maml/omniglot_5way_1shot.flags DATA=../shared/data/omniglot \
#     STEPS=400 bash benchmarks/pinned_pair.sh
set -eu
FLAGFILE=${FLAGFILE:?set FLAGFILE to a flagfile of experiments.maml}
DATA=${DATA:-}  # the dataset folder (none for sinusoid)
STEPS=${STEPS:-400}
PYTHON=${PYTHON:-python}
OUT=$(mktemp -d)
run() {
  $PYTHON -m experiments.maml --flagfile="$FLAGFILE" ${DATA:+--data_dir=$DATA} --workdir="$OUT/$1" \
    --num_steps="$STEPS" --eval_every=$((STEPS * 10)) --checkpoint_every=$((STEPS * 10)) \
    --val_tasks=16 --eval_tasks=16 --log_every=50 --noprogress > "$OUT/$1.log" 2>&1
}
seconds_per_step() {
  $PYTHON - "$OUT/$1/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
steps = [(r["step"], r["time"]) for r in rows if r["split"] == "train"]
(s0, t0), (s1, t1) = steps[0], steps[-1]
print(f"{(t1 - t0) / (s1 - s0):.4g}")
PY
}
run solo
taskset -c 0 bash -c "$(declare -f run); FLAGFILE='$FLAGFILE' DATA='$DATA' STEPS=$STEPS PYTHON='$PYTHON' OUT='$OUT'; run pinned0" &
taskset -c 1 bash -c "$(declare -f run); FLAGFILE='$FLAGFILE' DATA='$DATA' STEPS=$STEPS PYTHON='$PYTHON' OUT='$OUT'; run pinned1" &
wait
solo=$(seconds_per_step solo); a=$(seconds_per_step pinned0); b=$(seconds_per_step pinned1)
echo "one run on all cores: $solo s/step; two pinned runs: $a and $b s/step each"
$PYTHON -c "print(f'runs per hour, pinned pair / one run: {4 * $solo / ($a + $b):.2f}x')"
rm -rf "$OUT"
