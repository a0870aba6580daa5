r"""Transfer learning: pretrain a source network, then transfer it to a target task.

The source is a run of this same entry point with --strategy=scratch:

    python -m experiments.transfer \
      --flagfile=experiments/flags/transfer/mnist_0to4_source.flags \
      --data_dir=/path/to/mnist --workdir=runs/transfer_source_mnist_0to4

and each target run names it and a strategy (scratch, structure, feature_extraction,
finetune, keep_blocks, lp_ft, l2_sp: `transfer.strategies`):

    python -m experiments.transfer \
      --flagfile=experiments/flags/transfer/mnist_5to9_finetune.flags \
      --source_workdir=runs/transfer_source_mnist_0to4 --data_dir=/path/to/mnist \
      --train_per_class=10 --workdir=runs/mnist_5to9_finetune_n10

Every field of `transfer.runner.TransferRunConfig` is a flag (`--helpfull`). The run
directory gets transfer.json (what each parameter was loaded from, frozen or trained, its
learning rate) next to results.json. Killing a run and rerunning the same command resumes it
from the latest checkpoint, which wins over the source.
"""

from core import cli
from transfer import runner

cli.define_flags(runner.TransferRunConfig)

if __name__ == "__main__":
    cli.run(runner.TransferRunConfig, runner.build, runner.report)
