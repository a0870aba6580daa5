#!/bin/bash
# The four-scenario transfer grid of docs/results.md, run one after another from the repo root:
#
#   DATA=/path/to/shared/data OUT=runs/transfer bash experiments/grids/transfer_scenarios.sh
#   python -m experiments.transfer_report --runs="runs/transfer/*_n*_s*"
#
# Source: LeNet on MNIST digits 0-4 (mnist_0to4_source.flags, seed 0). Targets: MNIST digits 5-9
# (similar task) and Fashion-MNIST (different task), 10 or 100 training images per class or all
# of them; every strategy; seeds 0, then 1, then 2 (--seed and --data_seed: a new init and a new
# subsample per seed). A run with a results.json is skipped; an interrupted one resumes.
set -u
DATA=${DATA:?set DATA to the folder holding mnist/ and fashion-mnist/}
OUT=${OUT:-runs/transfer}
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-0 1 2}
STRATEGIES=${STRATEGIES:-scratch structure feature_extraction finetune keep_blocks lp_ft l2_sp}
SOURCE=$OUT/source_mnist_0to4
RUNS=("--flagfile=experiments/flags/transfer/mnist_0to4_source.flags --data_dir=$DATA/mnist --workdir=$SOURCE")
for seed in $SEEDS; do
  for target in mnist_5to9 fashion; do
    case $target in
      mnist_5to9) data="--data_dir=$DATA/mnist";;
      fashion) data="--data_dir=$DATA/fashion-mnist";;
    esac
    for n in 10 100 0; do
      for strategy in $STRATEGIES; do
        source="--source_workdir=$SOURCE"
        [ "$strategy" = scratch ] && source=""
        RUNS+=("--flagfile=experiments/flags/transfer/${target}_$strategy.flags $data $source --train_per_class=$n --seed=$seed --data_seed=$seed --workdir=$OUT/${target}_${strategy}_n${n}_s$seed")
      done
    done
  done
done

# shellcheck source=experiments/grids/run_grid.sh
source "$(dirname "$0")/run_grid.sh"
run_grid experiments.transfer
