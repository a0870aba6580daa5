#!/bin/bash
# Two worker processes on one study (issue 12): the same command started twice at once, both
# taking trials from the study's SQLite storage (Optuna's own distributed mode; on several
# machines give each the same --storage=<database URL> or journal:<file on shared storage>).
#
#   OUT=studies/two_workers bash experiments/grids/search_two_workers.sh
#
# The study: MAML sinusoid K=10, random search over the two learning rates, 12 trials of 2,000
# meta-iterations. When both workers are done, experiments.report lists how many trials each
# worker (host:pid) ran and whether any configuration or run directory was run twice.
set -eu
OUT=${OUT:-studies/two_workers}
PYTHON=${PYTHON:-python}
COMMAND=("$PYTHON" -m experiments.search --experiment=maml
         --flagfile=experiments/flags/maml/sinusoid_10shot.flags
         --space=experiments/spaces/maml_sinusoid_lrs.json --sampler=random --num_trials=12
         --study_dir="$OUT/study" -- --num_steps=2000 --eval_every=1000 --checkpoint_every=1000)
mkdir -p "$OUT"
"${COMMAND[@]}" > "$OUT/worker_a.log" 2>&1 &
a=$!
"${COMMAND[@]}" > "$OUT/worker_b.log" 2>&1 &
b=$!
wait $a
wait $b
"$PYTHON" -m experiments.report "$OUT/study" --out="$OUT/report"
