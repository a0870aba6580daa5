#!/bin/bash
# The effect of each regularisation option on the small-data transfer cell (issue 12), from the
# repo root:
#
#   SOURCE=runs/transfer_source_mnist_0to4 DATA=/path/to/fashion-mnist OUT=studies/regularisation \
#     bash experiments/grids/search_regularisation.sh
#   python -m experiments.report $OUT/* --out=$OUT/report
#
# The cell of search_samplers.sh (LeNet fine-tuned from MNIST 0-4 on Fashion-MNIST, 10 images per
# class, 500 steps validated every 50), its default configuration against one option changed at a
# time: weight decay 1e-4 and 1e-3, dropout 0.25 and 0.5, early stopping after 3 validations
# without improvement (--patience=3). Seeds 0, 1, 2 each (--seed and --data_seed), one run
# directory per seed under $OUT/<option>/. Finished runs are skipped; rerun after a kill.
set -eu
SOURCE=${SOURCE:?set SOURCE to the mnist_0to4_source run directory}
DATA=${DATA:?set DATA to the folder holding the Fashion-MNIST IDX files}
OUT=${OUT:-studies/regularisation}
PYTHON=${PYTHON:-python}
CELL=(--flagfile=experiments/flags/transfer/fashion_finetune.flags --source_workdir="$SOURCE"
      --data_dir="$DATA" --train_per_class=10 --num_steps=500 --eval_every=50
      --checkpoint_every=500 --seeds=0,1,2 --seed_flags=seed,data_seed --noprogress)
OPTIONS=("none:" "weight_decay_1e-4:--weight_decay=1e-4" "weight_decay_1e-3:--weight_decay=1e-3"
         "dropout_0.25:--dropout=0.25" "dropout_0.5:--dropout=0.5" "early_stopping_3:--patience=3")
for option in "${OPTIONS[@]}"; do
  name=${option%%:*}
  flag=${option#*:}
  "$PYTHON" -m experiments.transfer "${CELL[@]}" ${flag:+"$flag"} --workdir="$OUT/$name"
done
