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

The same entry point distils a teacher run into a student (--strategy=distill
--teacher_workdir=<run>, `transfer.distillation`), adapts to an unlabelled target domain
(--strategy=source_only or dann --da_target=inverted|sklearn_digits,
`transfer.domain_adaptation`), and augments training images by a named pipeline, or the one
the source run used (--augment=<name>|source, `transfer.augment`):

    python -m experiments.transfer \
      --flagfile=experiments/flags/transfer/dann_mnist_to_inverted_dann.flags \
      --data_dir=/path/to/mnist --seed=0 --workdir=runs/dann_mnist_to_inverted_dann_s0

Every field of `transfer.config.TransferRunConfig` is a flag (`--helpfull`). The run
directory gets transfer.json (what each parameter was loaded from, frozen or trained, its
learning rate; the augmentation pipeline and where its name came from; the teacher) next to
results.json. Killing a run and rerunning the same command resumes it from the latest
checkpoint, which wins over the source (and the teacher).
"""

from core import cli
from transfer import runner

cli.define_flags(runner.TransferRunConfig)

if __name__ == "__main__":
    cli.run(runner.TransferRunConfig, runner.build, runner.report)
