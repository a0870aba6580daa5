#!/bin/bash
# The domain-adaptation and distillation tables of docs/results.md, run one after another from the
# repo root (scikit-learn is needed for the 8x8 digits target: pip install -e '.[digits]'):
#
#   DATA=/path/to/shared/data OUT=runs/transfer bash experiments/grids/transfer_da_distill.sh
#   python -m experiments.transfer_report --runs="runs/transfer/dann_*_s*"
#   python -m experiments.transfer_report --runs="runs/transfer/distill_*_s*"
#
# Domain adaptation: MNIST -> inverted MNIST and MNIST -> scikit-learn's digits, source_only and
# dann, each selected by source validation, by target prediction entropy (label-free) and by the
# target-labelled oracle (reported under that name). Distillation: a LeNet teacher per dataset
# (seed 0), then MLP students at T = 1, 2, 4, 8 and the λ = 0 baseline. Seeds 0, 1, 2. A run with
# a results.json is skipped; an interrupted one resumes. PART=da or PART=distill runs one half.
set -u
DATA=${DATA:?set DATA to the folder holding mnist/ and fashion-mnist/}
OUT=${OUT:-runs/transfer}
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-0 1 2}
PART=${PART:-all}
FLAGS=experiments/flags/transfer
RUNS=()
if [ "$PART" != distill ]; then
  for seed in $SEEDS; do
    for target in inverted digits; do
      for strategy in source_only dann; do
        for selection in source_val target_entropy oracle; do
          RUNS+=("--flagfile=$FLAGS/dann_mnist_to_${target}_$strategy.flags --data_dir=$DATA/mnist --da_selection=$selection --seed=$seed --workdir=$OUT/dann_${target}_${strategy}_${selection}_s$seed")
        done
      done
    done
  done
fi
if [ "$PART" != da ]; then
  for dataset in mnist fashion; do
    data=$DATA/mnist; [ $dataset = fashion ] && data=$DATA/fashion-mnist
    teacher=$OUT/distill_${dataset}_teacher
    RUNS+=("--flagfile=$FLAGS/distill_${dataset}_lenet_teacher.flags --data_dir=$data --workdir=$teacher")
    for seed in $SEEDS; do
      RUNS+=("--flagfile=$FLAGS/distill_${dataset}_mlp_student.flags --data_dir=$data --teacher_workdir=$teacher --distill_lambda=0 --seed=$seed --workdir=$OUT/distill_${dataset}_lambda0_s$seed")
      for t in 1 2 4 8; do
        RUNS+=("--flagfile=$FLAGS/distill_${dataset}_mlp_student.flags --data_dir=$data --teacher_workdir=$teacher --distill_temperature=$t --seed=$seed --workdir=$OUT/distill_${dataset}_T${t}_s$seed")
      done
    done
  done
fi

# shellcheck source=experiments/grids/run_grid.sh
source "$(dirname "$0")/run_grid.sh"
run_grid experiments.transfer
