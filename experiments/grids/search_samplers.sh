#!/bin/bash
# Grid vs random vs TPE on one small-data transfer cell (issue 12), run from the repo root:
#
#   SOURCE=runs/transfer_source_mnist_0to4 DATA=/path/to/fashion-mnist OUT=studies/samplers \
#     bash experiments/grids/search_samplers.sh
#   python -m experiments.report $OUT/*_r* $OUT/default_n10 --out=$OUT/report
#
# The cell: LeNet fine-tuned from the MNIST 0-4 source (experiments/flags/transfer/
# mnist_0to4_source.flags; SOURCE is its run directory) on Fashion-MNIST, 10 images per class
# (fashion_finetune.flags), every trial 500 steps validated every 50 (the flagfile's 2,000 steps
# overfit 100 images long before the end; the best-validation checkpoint is what is kept).
# Each sampler gets the same budget of 16 trials over learning rate, weight decay, dropout and
# frozen blocks (grid: experiments/spaces/transfer_finetune_small_grid.json, its 16 points;
# random and TPE: transfer_finetune_small.json's ranges, TPE random for its first 5 trials),
# repeated with search seeds 0, 1, 2. Each study's best trial is rerun for seeds 0, 1, 2 (a new
# init and a new draw of the 10 images per class: --seed and --data_seed), and the default
# configuration (the flagfile, 500 steps) is run for the same seeds in $OUT/default_n10.
# A finished study or run is skipped; rerun the same command after a kill to resume.
set -eu
SOURCE=${SOURCE:?set SOURCE to the mnist_0to4_source run directory}
DATA=${DATA:?set DATA to the folder holding the Fashion-MNIST IDX files}
OUT=${OUT:-studies/samplers}
PYTHON=${PYTHON:-python}
REPS=${REPS:-0 1 2}
TRIALS=${TRIALS:-16}
BASE=experiments/flags/transfer/fashion_finetune.flags
CELL=(--source_workdir="$SOURCE" --data_dir="$DATA" --train_per_class=10 --num_steps=500
      --eval_every=50 --checkpoint_every=500)

"$PYTHON" -m experiments.transfer --flagfile=$BASE "${CELL[@]}" --seeds=0,1,2 \
  --seed_flags=seed,data_seed --workdir="$OUT/default_n10" --noprogress
for rep in $REPS; do
  for sampler in grid random tpe; do
    space=experiments/spaces/transfer_finetune_small.json
    [ "$sampler" = grid ] && space=experiments/spaces/transfer_finetune_small_grid.json
    "$PYTHON" -m experiments.search --experiment=transfer --flagfile=$BASE --space=$space \
      --sampler=$sampler --num_trials="$TRIALS" --tpe_startup_trials=5 --seed="$rep" \
      --study_dir="$OUT/${sampler}_r$rep" --best_seeds=0,1,2 --seed_flags=seed,data_seed \
      -- "${CELL[@]}"
  done
done
