#!/bin/bash
# The short-budget multi-task grid of docs/results.md, run one after another from the repo root:
#
#   DATA=/path/to/shared/data OUT=runs/mtl_short bash experiments/grids/mtl_short.sh
#   python -m experiments.mtl_report --runs="runs/mtl_short/multi_*"
#
# MultiMNIST, MultiFashion, Multi-(Fashion+MNIST): 3 epochs (642 steps; the flagfiles say 100),
# validation every 107 steps, best validation tested; 9 methods and the 2 single-task runs;
# seeds 0, then rotated MNIST (5 epochs) and School (as flagged) with seed 0, then seeds 1 and 2.
# A run with a results.json is skipped; an interrupted one resumes where it stopped.
set -u
DATA=${DATA:?set DATA to the folder holding mnist/, fashion-mnist/ and school/}
OUT=${OUT:-runs/mtl_short}
PYTHON=${PYTHON:-python}
SHORT="--num_steps=642 --eval_every=107 --checkpoint_every=214 --log_every=107"
METHODS="equal famo mgda_ub pcgrad cagrad nash_mtl imtl_g aligned_mtl upgrad"
RUNS=()

multi() {
  local seed=$1 bench data
  for bench in multi_mnist multi_fashion multi_fashion_mnist; do
    case $bench in
      multi_mnist) data="--data_dir=$DATA/mnist";;
      multi_fashion) data="--data_dir=$DATA/fashion-mnist";;
      multi_fashion_mnist) data="--data_dir=$DATA/fashion-mnist --second_data_dir=$DATA/mnist";;
    esac
    for task in left right; do
      RUNS+=("--flagfile=experiments/flags/mtl/${bench}_equal.flags $data $SHORT --tasks=$task --seed=$seed --workdir=$OUT/${bench}_stl_${task}_s$seed")
    done
    for m in $METHODS; do
      RUNS+=("--flagfile=experiments/flags/mtl/${bench}_$m.flags $data $SHORT --seed=$seed --workdir=$OUT/${bench}_${m}_s$seed")
    done
  done
}

multi 0
ROTATED="--data_dir=$DATA/mnist --num_steps=1070 --eval_every=107 --checkpoint_every=535 --log_every=107"
for task in digit angle; do
  RUNS+=("--flagfile=experiments/flags/mtl/rotated_mnist_static.flags --method=equal --weights= $ROTATED --tasks=$task --workdir=$OUT/rotated_mnist_stl_${task}_s0")
done
for m in static uw gradnorm famo; do
  RUNS+=("--flagfile=experiments/flags/mtl/rotated_mnist_$m.flags $ROTATED --workdir=$OUT/rotated_mnist_${m}_s0")
done
for m in equal uw famo mgda; do
  RUNS+=("--flagfile=experiments/flags/mtl/school_$m.flags --data_dir=$DATA/school --workdir=$OUT/school_${m}_s0")
done
multi 1
multi 2

# shellcheck source=experiments/grids/run_grid.sh
source "$(dirname "$0")/run_grid.sh"
run_grid experiments.mtl
