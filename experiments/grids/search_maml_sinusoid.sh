#!/bin/bash
# MAML sinusoid (K=10): a TPE search over the inner and meta learning rates with median pruning,
# against the paper's hand-set values (alpha = 0.01, beta = 0.001) at the same step budget
# (issue 12), from the repo root:
#
#   OUT=studies/maml_sinusoid bash experiments/grids/search_maml_sinusoid.sh
#   python -m experiments.report $OUT/tpe $OUT/paper_values --out=$OUT/report
#
# Every run is 10,000 meta-iterations (the paper trains 70,000), validated every 1,000 on 600
# tasks; the objective is the validation MSE after one inner step (minimised). 16 trials, TPE
# random for its first 8, the median pruner from the 5th finished trial on. The best trial and
# the paper's values are then run for seeds 0, 1, 2 and tested on the same 600 test tasks.
# A finished study or run is skipped; rerun the same command after a kill to resume.
set -eu
OUT=${OUT:-studies/maml_sinusoid}
PYTHON=${PYTHON:-python}
TRIALS=${TRIALS:-16}
BASE=experiments/flags/maml/sinusoid_10shot.flags
BUDGET=(--num_steps=10000 --eval_every=1000 --checkpoint_every=1000)

"$PYTHON" -m experiments.maml --flagfile=$BASE "${BUDGET[@]}" --seeds=0,1,2 \
  --workdir="$OUT/paper_values" --noprogress
"$PYTHON" -m experiments.search --experiment=maml --flagfile=$BASE \
  --space=experiments/spaces/maml_sinusoid_lrs.json --sampler=tpe --num_trials="$TRIALS" \
  --tpe_startup_trials=8 --pruner=median --pruner_startup_trials=5 --study_dir="$OUT/tpe" \
  --best_seeds=0,1,2 -- "${BUDGET[@]}"
