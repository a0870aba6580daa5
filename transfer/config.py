"""The config of a transfer run: every flag of `experiments.transfer`, and its checks.

One dataclass serves every strategy (`transfer.strategies.STRATEGIES`): the
fine-tuning family, distillation (`transfer.distillation`) and domain
adaptation (`transfer.domain_adaptation`). An option that only one strategy
reads is refused with any other strategy when it differs from its default,
so a flag never silently does nothing. `validate` checks what needs no file;
`build` checks what needs the data, the source or the teacher.

`check_resumed` covers what `core.experiment` lets a resumed run change but
a transfer run must not: the augmentation pipeline resolved from the source
(`--augment=source`), and a DANN run's `--num_steps` (its schedules are
functions of the progress step/num_steps).
"""

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from core import conv
from core import experiment
from core import run_dir
from core import supervised
from core.datasets import omniglot
from core.errors import ConfigError
from core.experiment import option, override
from transfer import augment as augment_lib
from transfer import conv4
from transfer import da_data
from transfer import data as data_lib
from transfer import networks
from transfer import omniglot_data
from transfer.strategies import DOMAIN_ADAPTATION, FRESH, LOADING, PER_BLOCK, STRATEGIES

SELECTIONS = ("source_val", "target_entropy", "oracle")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransferRunConfig(supervised.SupervisedConfig):
    """Everything that defines a transfer run (the flags of `experiments.transfer`)."""

    num_steps: int = override(2000)
    eval_every: int = override(200)
    checkpoint_every: int = override(500)
    source_workdir: str | None = option(None, "The source: a run directory of this library "
                                              "(e.g. a --strategy=scratch pretraining run).")
    source_params: str | None = option(None, "The source as an .npz file "
                                             "(transfer.params.save_npz), instead of "
                                             "--source_workdir.")
    which: str = option("best", "The source (or teacher) run's checkpoint: the "
                                "best-validation one or the latest.", choices=("best", "latest"))
    dataset: str = option("mnist", "The target dataset (domain adaptation: the labelled "
                                   "source domain).", choices=data_lib.DATASETS)
    data_dir: str | None = option(None, "Folder with the dataset's official files (read only): "
                                        "the four IDX files, or Omniglot's "
                                        "images_background.zip and images_evaluation.zip.",
                                  resumable=True)
    cache_dir: str | None = option(None, "Where decoded Omniglot images are cached (default: "
                                         "~/.cache/metatransfer, shared with MAML runs).",
                                   resumable=True)
    val_per_class: int = option(2, "Omniglot: validation drawings per class, by --data_seed.",
                                minimum=0)
    test_per_class: int = option(5, "Omniglot: held-out test drawings per class, by "
                                    "--data_seed.", minimum=1)
    num_classes_target: int = option(0, "Omniglot: a seeded subset of N characters "
                                        "(--data_seed; e.g. 20 for a 20-way target; 0: all).",
                                     minimum=0)
    omniglot_split: tuple[int, int] = option(
        omniglot_data.omniglot.MAML_SPLIT_SIZES, "Omniglot MAML split's (training, validation) "
        "character counts, the rest test; must be the MAML run's (its config.json).")
    classes: tuple[int, ...] = option((), "The target's class ids, relabelled 0..n-1 in this "
                                          "order (e.g. 5,6,7,8,9); default: all ten.")
    train_per_class: int = option(0, "Training examples per class, drawn by --data_seed "
                                     "(0: all).", minimum=0)
    data_seed: int = option(0, "Seed of the validation split and the per-class subsampling.",
                            minimum=0)
    network: str = option("lenet", "The trunk (a fresh linear head goes on it).",
                          choices=networks.NETWORKS)
    mlp_hidden: tuple[int, ...] = option((256, 128), "Hidden widths of --network=mlp.")
    conv_impl: str = option("auto", "Convolutions of the LeNet and Conv4 trunks: xla, im2col, "
                                    "or auto (im2col on CPU, xla elsewhere).",
                            choices=("auto",) + conv.CONV_IMPLS)
    bn_scale: bool = option(True, "--network=conv4: its batch norms have a learnable scale "
                                  "(--nobn_scale: none, as a MAML run of the reference preset).",
                            before=True)
    bn_epsilon: float = option(1e-5, "--network=conv4: its batch norms' epsilon (1e-3: the "
                                     "reference MAML code's).", before=1e-5)
    cut_features: str = option("flatten", "--network=conv4 cut by --keep_blocks: the head reads "
                                          "the last kept map flattened, or averaged over space "
                                          "(mean; the whole Conv4 always averages, as MAML's "
                                          "head input).", choices=conv4.CUT_FEATURES,
                               before=lambda stored: ("mean" if stored.get("network") == "conv4"
                                                      and stored.get("keep_blocks")
                                                      else "flatten"))
    omniglot_resize: str = option("lanczos", "Omniglot: how drawings are resized to 28x28: "
                                             "grey-level Lanczos, or nearest_binary (binary, "
                                             "as the reference MAML code).",
                                  choices=omniglot.RESIZE_METHODS, before="lanczos")
    strategy: str = option("finetune", "scratch: fresh init; structure: the source's "
                                       "architecture, fresh init; feature_extraction: frozen "
                                       "trunk, head only; finetune: everything, per-block "
                                       "learning rates; keep_blocks: the lowest --keep_blocks "
                                       "blocks, fine-tuned; lp_ft: the head for --lp_steps, "
                                       "then fine-tuning; l2_sp: fine-tuning pulled towards "
                                       "the source; distill: fresh init, a teacher's soft "
                                       "targets; source_only: fresh init, tested on "
                                       "--da_target too; dann: domain-adversarial training "
                                       "on --da_target.", choices=STRATEGIES)
    keep_blocks: int = option(0, "Keep the lowest N trunk blocks and put the head on their "
                                 "features (0: all blocks); needed by --strategy=keep_blocks.",
                              minimum=0)
    freeze_blocks: int = option(0, "Freeze the N lowest trunk blocks (per-block strategies).",
                                minimum=0)
    trunk_lr_scale: float = option(1.0, "Learning rate of the trunk's blocks as a multiple of "
                                        "--learning_rate (e.g. 0.1; 0 freezes them).",
                                   minimum=0.0)
    layer_decay: float = option(1.0, "Layer-wise learning-rate decay in (0, 1]: block l of L "
                                     "trains at decay**(L - l) times the trunk's rate.",
                                minimum=0.0)
    lp_steps: int = option(0, "Steps of linear probing before everything trains "
                              "(--strategy=lp_ft).", minimum=0)
    l2_sp_alpha: float = option(0.01, "L2-SP's α: pull of the loaded weights towards the "
                                      "source.", minimum=0.0)
    l2_sp_beta: float = option(0.01, "L2-SP's β: weight decay of the fresh head.",
                               minimum=0.0)
    dont_load: tuple[str, ...] = option((), "Patterns of trunk parameters kept at their fresh "
                                            "init (the head always is).")
    ignore_source: tuple[str, ...] = option((), "Patterns of source parameters the target has "
                                                "no use for (e.g. another family's 'heads').")
    zero_init_head: bool = option(False, "Start the head at zeros instead of a fresh init.")
    augment: str = option("none", "Augmentation of the training images (transfer.augment); "
                                  "source: the pipeline the source run (or the teacher) "
                                  "recorded.", choices=augment_lib.CHOICES)
    teacher_workdir: str | None = option(None, "Distillation's teacher: a run directory of "
                                               "this library (its network is rebuilt from "
                                               "its config.json; --which picks the "
                                               "checkpoint).")
    distill_lambda: float = option(1.0, "λ of distillation: CE + λ·T²·KL(softmax(z_t/T) ‖ "
                                        "softmax(z_s/T)).", minimum=0.0)
    distill_temperature: float = option(4.0, "Distillation's temperature T (> 0).",
                                        minimum=0.0)
    da_target: str = option("none", "Domain adaptation's unlabelled target domain: inverted "
                                    "(--dataset's images, 1 - x) or sklearn_digits "
                                    "(scikit-learn's 8x8 digits upsampled to 28x28; needs "
                                    "scikit-learn).", choices=da_data.DA_TARGETS)
    da_val_size: int = option(500, "Target-domain validation images, carved by --data_seed "
                                   "(their labels are read only by --da_selection=oracle).",
                              minimum=0)
    da_selection: str = option("source_val", "Checkpoint selection of domain adaptation, "
                                             "never on target test labels: source_val (source "
                                             "validation accuracy), target_entropy (mean "
                                             "prediction entropy on unlabelled target "
                                             "validation images, lower is better), oracle "
                                             "(target-labelled validation; results say "
                                             "selection: oracle).", choices=SELECTIONS)
    da_lr_annealing: bool = option(False, "The DANN paper's learning-rate annealing "
                                          "lr/(1 + 10·p)^0.75, p = step/num_steps "
                                          "(source_only and dann).")
    dann_weight: float = option(1.0, "Weight of DANN's domain-classification loss.",
                                minimum=0.0)
    dann_gamma: float = option(10.0, "γ of DANN's reversal schedule λ_p = 2/(1 + exp(-γ·p)) "
                                     "- 1, p = step/num_steps.", minimum=0.0)
    domain_hidden: tuple[int, ...] = option((100,), "Hidden widths of DANN's domain "
                                                    "classifier (ReLU; one logit).")

    def validate(self) -> None:
        super().validate()
        self._check_source()
        self._check_strategy_options()
        self._check_distillation()
        self._check_domain_adaptation()
        self._check_augment()
        self._check_omniglot()
        self._check_conv4()

    @property
    def is_omniglot(self) -> bool:
        return self.dataset in omniglot_data.DATASETS

    @property
    def resolved_cache_dir(self) -> str:
        default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                               "metatransfer")
        return self.cache_dir or default

    def omniglot_options(self) -> omniglot_data.OmniglotOptions | None:
        """The Omniglot options of `transfer.data.load_target` (None for the IDX datasets)."""
        if not self.is_omniglot:
            return None
        return omniglot_data.OmniglotOptions(
            cache_dir=self.resolved_cache_dir, val_per_class=self.val_per_class,
            test_per_class=self.test_per_class, num_classes=self.num_classes_target,
            maml_split=tuple(self.omniglot_split), resize=self.omniglot_resize)

    def check_source_network(self) -> None:
        """Refuses a Conv4 source whose batch norm or image resize is not this run's.

        See `transfer.omniglot_data.check_source_network`; a source that records
        none of the three ran with the options' `before` values.
        """
        names = ("bn_scale", "bn_epsilon", "omniglot_resize")
        before = type(self).values_before()
        omniglot_data.check_source_network(self.source_workdir,
                                           {name: getattr(self, name) for name in names},
                                           {name: before[name] for name in names})

    def _changed(self, name: str) -> bool:
        """The field differs from its declared default (the flag was given another value)."""
        return getattr(self, name) != experiment.field_options(type(self))[name]["default"]

    def _check_omniglot(self) -> None:
        """The Omniglot flags only with an Omniglot dataset, the IDX ones only without."""
        omniglot_only = ("cache_dir", "val_per_class", "test_per_class", "num_classes_target",
                         "omniglot_split", "omniglot_resize")
        if not self.is_omniglot:
            for name in omniglot_only:
                if self._changed(name):
                    raise ConfigError(f"--{name} applies to the Omniglot datasets "
                                      f"({', '.join(omniglot_data.DATASETS)}), not "
                                      f"--dataset={self.dataset}")
            return
        for name, instead in (("val_size", "--val_per_class"),
                              ("classes", "--num_classes_target")):
            if self._changed(name):
                raise ConfigError(f"--dataset={self.dataset} splits each character's drawings: "
                                  f"use {instead} instead of --{name}")
        if self.strategy in ("distill",) + DOMAIN_ADAPTATION:
            raise ConfigError(f"--strategy={self.strategy} reads MNIST-family data; "
                              f"--dataset={self.dataset} serves the fine-tuning strategies")

    def _check_conv4(self) -> None:
        """The Conv4's options only with --network=conv4, --cut_features only with a cut."""
        if self.network != "conv4":
            for name in ("bn_scale", "bn_epsilon"):
                if self._changed(name):
                    raise ConfigError(f"--{name} is the batch norm of --network=conv4; "
                                      f"--network={self.network} has none")
        if self._changed("cut_features") and not (self.network == "conv4" and self.keep_blocks):
            raise ConfigError("--cut_features applies to --network=conv4 cut by --keep_blocks")
        if self.bn_epsilon <= 0:
            raise ConfigError(f"--bn_epsilon must be > 0, got {self.bn_epsilon}")

    def _check_source(self) -> None:
        """Exactly one source for the strategies that read one, none for the fresh ones."""
        if self.source_workdir and self.source_params:
            raise ConfigError("give one source: --source_workdir or --source_params, not both")
        has_source = bool(self.source_workdir or self.source_params)
        fresh = self.strategy in FRESH
        if fresh and (has_source or self.dont_load or self.ignore_source):
            raise ConfigError(f"--strategy={self.strategy} trains from a fresh init and reads "
                              f"no source; drop --source_workdir/--source_params/--dont_load/"
                              f"--ignore_source")
        if not fresh and not has_source:
            raise ConfigError(f"--strategy={self.strategy} needs a source: --source_workdir="
                              f"<a run directory> or --source_params=<an .npz file>")
        if self.dont_load and self.strategy not in LOADING:
            raise ConfigError(f"--dont_load applies to strategies that load weights "
                              f"({', '.join(LOADING)}), not {self.strategy}")

    def _check_strategy_options(self) -> None:
        """Each strategy's options set only where they act, and to what it needs."""
        self._only_with(("freeze_blocks", "trunk_lr_scale", "layer_decay"), PER_BLOCK)
        self._only_with(("lp_steps",), ("lp_ft",))
        self._only_with(("l2_sp_alpha", "l2_sp_beta"), ("l2_sp",))
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"--layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.strategy == "lp_ft" and not 0 < self.lp_steps < self.num_steps:
            raise ConfigError(f"--strategy=lp_ft needs --lp_steps >= 1 steps of linear probing, "
                              f"fewer than --num_steps={self.num_steps} (then everything "
                              f"trains); got --lp_steps={self.lp_steps}")
        if self.strategy == "feature_extraction" and self.dropout:
            raise ConfigError("--dropout acts on the trunk, which --strategy=feature_extraction "
                              "runs once, in evaluation mode, to cache its features")
        if self.strategy == "keep_blocks" and not self.keep_blocks:
            raise ConfigError("--strategy=keep_blocks needs --keep_blocks >= 1 (the lowest "
                              "trunk blocks kept)")
        if self.strategy == "finetune" and self.keep_blocks:
            raise ConfigError("--strategy=finetune fine-tunes the whole trunk; fine-tuning the "
                              "lowest --keep_blocks blocks is --strategy=keep_blocks")

    def _check_distillation(self) -> None:
        """A teacher for distillation, and a positive temperature."""
        self._only_with(("teacher_workdir", "distill_lambda", "distill_temperature"),
                        ("distill",))
        if self.strategy != "distill":
            return
        if not self.teacher_workdir:
            raise ConfigError("--strategy=distill needs --teacher_workdir=<a run directory of "
                              "this library> (e.g. a --strategy=scratch LeNet run)")
        if not self.distill_temperature > 0:
            raise ConfigError(f"--distill_temperature must be > 0, got "
                              f"{self.distill_temperature}")

    def _check_domain_adaptation(self) -> None:
        """A target domain, and target validation images for the selections that read them."""
        self._only_with(("da_target", "da_val_size", "da_selection", "da_lr_annealing"),
                        DOMAIN_ADAPTATION)
        self._only_with(("dann_weight", "dann_gamma", "domain_hidden"), ("dann",))
        if self.strategy not in DOMAIN_ADAPTATION:
            return
        if self.da_target == "none":
            raise ConfigError(f"--strategy={self.strategy} needs a target domain: "
                              f"--da_target=inverted or --da_target=sklearn_digits")
        if self.da_target == "sklearn_digits" and self.dataset != "mnist":
            raise ConfigError(f"--da_target=sklearn_digits holds handwritten digits: its "
                              f"source is --dataset=mnist, not {self.dataset}")
        if any(width < 1 for width in self.domain_hidden):
            raise ConfigError(f"--domain_hidden widths must be >= 1, got "
                              f"{','.join(map(str, self.domain_hidden))}")
        if self.da_selection != "source_val" and not (self.da_val_size and self.eval_every):
            raise ConfigError(f"--da_selection={self.da_selection} selects on target "
                              f"validation images: it needs --da_val_size >= 1 and "
                              f"--eval_every >= 1")

    def _check_augment(self) -> None:
        """Augmentation needs images at every step, and a run directory to copy it from."""
        if self.augment != "none" and self.strategy == "feature_extraction":
            raise ConfigError("--augment acts on the training images, but "
                              "--strategy=feature_extraction trains on features cached once; "
                              "use --augment=none")
        if self.augment == augment_lib.FROM_SOURCE and self.augment_origin() is None:
            raise ConfigError("--augment=source reuses the pipeline a run directory recorded: "
                              "it needs --source_workdir (or, for --strategy=distill, "
                              "--teacher_workdir); name the pipeline instead")

    def augment_origin(self) -> tuple[str, str] | None:
        """(role, run directory) that --augment=source reads: the source, or the teacher."""
        if self.source_workdir:
            return "source", self.source_workdir
        if self.strategy == "distill" and self.teacher_workdir:
            return "teacher", self.teacher_workdir
        return None

    def _only_with(self, names: tuple[str, ...], strategies: tuple[str, ...]) -> None:
        """Refuses a non-default value of `names` under a strategy that does not read it."""
        for name in names:
            if self._changed(name) and self.strategy not in strategies:
                raise ConfigError(f"--{name} applies to --strategy={'/'.join(strategies)}, "
                                  f"not {self.strategy}")

    def default_workdir(self) -> str:
        classes = "".join(map(str, self.classes)) if self.classes else "all"
        if self.num_classes_target:
            classes = f"{self.num_classes_target}way"
        target = selection = ""
        if self.strategy in DOMAIN_ADAPTATION:
            target, selection = f"_to_{self.da_target}", f"_{self.da_selection}"
        return (f"runs/transfer_{self.dataset}{target}_{classes}_{self.strategy}{selection}_"
                f"n{self.train_per_class}_s{self.seed}")


def check_resumed(workdir: str | None, values: Mapping[str, Any]) -> None:
    """Refuses to resume a run directory whose config.json records other `values`.

    Args:
      workdir: the run directory (nothing is checked before its first start).
      values: config.json keys and the values this start would use.

    Raises:
      ConfigError: naming every key whose stored value differs.
    """
    stored = run_dir.read_run_config(workdir) if workdir else None
    if not stored:
        return
    changed = {k: (stored[k], v) for k, v in values.items() if k in stored and stored[k] != v}
    if changed:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ConfigError(f"the run directory {workdir} was started with other values "
                          f"({listed}), which a resumed run cannot change here; resume with "
                          f"the same inputs or use a new --workdir")

