r"""Seconds per epoch of feature extraction against fine-tuning; the supervised step vs torch.

One measurement per process (peak RSS is per process):

    python -m benchmarks.transfer_speed --mode=epoch --examples=10000 --epochs=3
    python -m benchmarks.transfer_speed --mode=step --model=lenet --steps=20
    python -m benchmarks.transfer_speed --mode=step --model=mlp --step_impl=transfer
    python -m benchmarks.transfer_speed --table --peer_python=/tmp/peervenv/bin/python

The last line printed is one JSON object. `--table` runs every measurement in
subprocesses and prints markdown tables plus a JSON list of every row.

--mode=epoch: the Program of `transfer.runner.build` (what `python -m
  experiments.transfer` trains: its jitted step and batch_fn) on fake MNIST IDX
  files (`core.datasets.fake_idx`: --examples training and --test_examples test
  images, 28x28x1, 10 classes, no validation split), with
  a fresh LeNet of the transfer family (`transfer.networks`, 4 blocks) saved as the
  .npz source, once with --strategy=feature_extraction (the head's step on the
  trunk's features cached once by `transfer.features`) and once with
  --strategy=finetune (the whole network's step on images), same --batch, Adam
  1e-3. Reported per strategy: `ms_per_step` (median latency on one fixed batch),
  `sec_per_epoch` (median over --epochs epochs of len(train) // batch steps, run as
  `core.train_loop` runs them: `batch_fn(step)` per step, each step's loss read once
  the next is queued; no logging, validation or checkpoints), `compile_s`,
  `build_s` (the runner's build), and for feature extraction `extract_s`: the
  one-off cost, the runner's own `extract_features` call (compile + every split)
  timed on its own. `epoch_ratio` = finetune / feature_extraction seconds per epoch.

--mode=step: one plain supervised train step (cross-entropy, backward, Adam 1e-3) on
  random data fixed for the run, with the layer sizes, batch (256), input (28x28x1)
  and optimizer of the peer's --config of the same name:
    lenet  the peer's MultiLeNet with one head: `core.trunks.MultiLeNetTrunk` (conv
           1->10 k5 VALID, pool, ReLU, conv 10->20 k5, channel dropout 0.5, pool, ReLU,
           fc 320->50, ReLU) -> fc 50->50, ReLU -> fc 50->10 (24,390 parameters). This
           is NOT the transfer family's --network=lenet (6/16 filters, 'SAME', 120-84),
           which --mode=epoch uses.
    conv4  `core.trunks.Conv4Trunk` 4 x [3x3 conv 64 stride 2, batch norm, ReLU] ->
           mean pool -> fc 64->10 (112,586 parameters; 'SAME' padding puts the extra
           pixel after, torch's pad 1 on both sides: same shapes, same FLOPs)
    mlp    784-256-128-10 ReLU, the transfer family's --network=mlp (235,146 parameters)
  Each is a `transfer.networks.Classifier` (trunk + one Dense head). --step_impl:
    supervised  `core.supervised.make_train_step` with `make_optimizer`'s Adam; conv4's
                batch norm in 'running' mode (batch statistics, running averages
                updated), as torch's BatchNorm2d in train mode
    transfer    the transfer runner's --strategy=scratch step (`transfer.steps`:
                per-block groups, one Adam per group under `optax.partition`); conv4's
                batch norm 'transductive' (the transfer step keeps no model state)
  Reported: `ms_per_step` (median after --warmup), `ms_per_step_min`, `compile_s`,
  `peak_rss_mb`, as `benchmarks.mtl_speed`.

The peer to alternate with (`../shared/peers/torch_supervised.py`, its own venv; it
takes --config, not --model; see ../shared/peers/README.md). Its fastest setting
differs per model: try each of

    /tmp/peervenv/bin/python ../shared/peers/torch_supervised.py --config lenet --steps 20 --threads 2
    /tmp/peervenv/bin/python ../shared/peers/torch_supervised.py --config lenet --steps 20 --threads 2 --adam fused
    /tmp/peervenv/bin/python ../shared/peers/torch_supervised.py --config lenet --steps 20 --threads 2 --adam foreach
    /tmp/peervenv/bin/python ../shared/peers/torch_supervised.py --config lenet --steps 20 --threads 2 --compile --adam fused

(and --config conv4, --config mlp). `--table --peer_python=...` does this: per round
and model, every --peer_variants setting of the peer, then our step, alternately;
the speed-up is the fastest peer setting's median over ours. Both sides inherit this
process's environment, so with --malloc_tuning the peer runs with the same
GLIBC_TUNABLES (equal terms, as ../shared/peers/README.md advises);
--peer_omp_wait_policy=PASSIVE sets OMP_WAIT_POLICY for the peer (only needed when
the cores are not idle).
"""

import json
import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import cpu

MODELS = ("lenet", "conv4", "mlp")
NUM_CLASSES = 10
LEARNING_RATE = 1e-3
PEER_VARIANTS = {"default": [], "fused": ["--adam", "fused"], "foreach": ["--adam", "foreach"],
                 "compile": ["--compile"], "compile_fused": ["--compile", "--adam", "fused"]}
_PEER_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            os.pardir, "shared", "peers", "torch_supervised.py")

flags.DEFINE_enum("mode", "step", ["step", "epoch"], "What to measure (module docstring).")
flags.DEFINE_enum("model", "lenet", list(MODELS), "--mode=step: the peer's --config.")
flags.DEFINE_enum("step_impl", "supervised", ["supervised", "transfer"],
                  "--mode=step: core.supervised's step or the transfer runner's scratch step.")
flags.DEFINE_integer("batch", 256, "Examples per step (the peer's default).")
flags.DEFINE_integer("steps", 20, "Timed steps (median reported).")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_integer("examples", 10_000, "--mode=epoch: training images.")
flags.DEFINE_integer("test_examples", 1000, "--mode=epoch: test images (their features are "
                     "part of the one-off cost, as the runner extracts every split).")
flags.DEFINE_integer("epochs", 3, "--mode=epoch: timed epochs per strategy (median reported).")
flags.DEFINE_string("conv_impl", "auto", "Convolutions: xla, im2col or auto (im2col on CPU).")
flags.DEFINE_integer("threads", 2, "CPU cores to pin the process to (as the peer).")
flags.DEFINE_bool("malloc_tuning", True,
                  "Restart with glibc malloc tunables, as the entry points do (core/runtime.py).")
flags.DEFINE_bool("table", False, "Run every measurement in subprocesses.")
flags.DEFINE_list("table_models", list(MODELS), "Models of --table.")
flags.DEFINE_list("table_step_impls", ["supervised", "transfer"], "Step impls of --table.")
flags.DEFINE_bool("table_epoch", True, "Include --mode=epoch in --table.")
flags.DEFINE_string("peer_python", "", "Python of the peer's venv (e.g. "
                    "/tmp/peervenv/bin/python); empty: --table runs no peer.")
flags.DEFINE_string("peer_script", os.path.normpath(_PEER_SCRIPT), "The peer script.")
flags.DEFINE_list("peer_variants", list(PEER_VARIANTS),
                  f"Peer settings --table tries ({', '.join(PEER_VARIANTS)}).")
flags.DEFINE_string("peer_omp_wait_policy", "", "OMP_WAIT_POLICY for the peer (empty: unset).")
flags.DEFINE_integer("rounds", 1, "--table: rounds of alternated measurements (medians).")
FLAGS = flags.FLAGS


def _classifier(name: str, conv_impl: str, bn_mode: str):
    """(model, trunk block names) with the peer's layer sizes for `name` (module docstring)."""
    import flax.linen as nn

    from core import trunks
    from transfer import networks
    if name == "mlp":
        hidden = (256, 128)
        return (networks.make_classifier("mlp", NUM_CLASSES, len(hidden), mlp_hidden=hidden),
                networks.block_names("mlp", hidden))
    if name == "conv4":
        trunk = trunks.Conv4Trunk(filters=64, spatial_pool="mean", bn_mode=bn_mode,
                                  conv_impl=conv_impl)
        return networks.Classifier(trunk, NUM_CLASSES), tuple(f"block{i}" for i in range(4))
    # The peer's head fc 50->50, ReLU, fc 50->10: a Dense + ReLU on the MultiLeNet trunk,
    # then the Classifier's Dense head.
    trunk = nn.Sequential([trunks.MultiLeNetTrunk(conv_impl=conv_impl), nn.Dense(50), nn.relu])
    return networks.Classifier(trunk, NUM_CLASSES), ("layers_0", "layers_1")


def _cross_entropy_loss(model):
    """`core.supervised`'s loss_fn(params, model_state, batch, train, rng): mean cross-entropy."""
    import optax

    from transfer.data import LABEL

    def loss_fn(params, model_state, batch, train, rng):
        mutable = list(model_state) if train and model_state else False
        out = model.apply({"params": params, **model_state}, batch["x"], train=train,
                          rngs={"dropout": rng}, mutable=mutable)
        logits, new_state = out if mutable else (out, model_state)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"][LABEL]).mean()
        return loss, (dict(new_state), {"loss": loss})

    return loss_fn


def measure_step(model_name: str, step_impl: str, batch: int, steps: int, warmup: int,
                 conv_impl: str) -> dict:
    """Times one jitted supervised train step of the peer's `model_name`."""
    import jax
    import numpy as np

    from core import conv
    from core import mesh as mesh_lib
    from core import supervised
    from core import train_state
    from core.losses import split_variables
    from transfer import steps as steps_lib
    from transfer import strategies
    from transfer.data import LABEL
    if conv_impl == "auto":
        conv_impl = conv.default_conv_impl()
    bn_mode = "running" if step_impl == "supervised" else "transductive"
    model, blocks = _classifier(model_name, conv_impl, bn_mode)
    rng = np.random.default_rng(0)
    data = {"x": rng.uniform(size=(batch, 28, 28, 1)).astype(np.float32),
            "y": {LABEL: rng.integers(0, NUM_CLASSES, batch).astype(np.int32)}}
    params, model_state = split_variables(
        model.init(jax.random.PRNGKey(0), data["x"][:1], train=False))
    config = supervised.SupervisedConfig(workdir="unused", optimizer="adam",
                                         learning_rate=LEARNING_RATE)
    if step_impl == "supervised":
        optimizer = supervised.make_optimizer(config)
        step = supervised.make_train_step(_cross_entropy_loss(model), optimizer, seed=0)
    else:  # transfer.runner's _groups and _state_and_step for --strategy=scratch
        groups = strategies.per_block_groups(params, blocks, LEARNING_RATE)
        optimizer = steps_lib.grouped_optimizer(config, groups)
        step = steps_lib.make_train_step(steps_lib.logits_fn(model, False), groups, optimizer,
                                         seed=0)
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    state = mesh_lib.put_replicated(train_state.create(params, model_state, optimizer), mesh)
    jitted = train_state.jit_step(step, mesh)
    placed = mesh_lib.put_batch(data, mesh)
    _, state, metrics, compile_s, times = cpu.time_step(jitted, state, placed, steps, warmup)
    return {"kind": "step", "model": model_name, "step_impl": step_impl, "batch": batch,
            "conv_impl": conv_impl if model_name != "mlp" else None,
            "bn_mode": bn_mode if model_name == "conv4" else None,
            "num_params": sum(int(np.size(p)) for p in jax.tree.leaves(params)),
            **cpu.step_stats(times, compile_s), "loss": float(metrics["loss"]), "steps": steps}


def _time_epochs(compiled, state, batch_fn, steps_per_epoch: int, epochs: int):
    """(state, seconds of each epoch) of `epochs` epochs, run as `core.train_loop` runs steps."""
    import jax

    times, step = [], 0
    for _ in range(epochs):
        t0 = time.perf_counter()
        pending = None
        for _ in range(steps_per_epoch):
            state, metrics = compiled(state, batch_fn(step))
            step += 1
            if pending is not None:
                float(pending)  # the loop's loss guard: the previous step, once this one is queued
            pending = metrics["loss"]
        float(pending)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    return state, times


def measure_epoch(examples: int, test_examples: int, batch: int, epochs: int, steps: int,
                  warmup: int, conv_impl: str) -> dict:
    """Seconds per epoch of feature extraction (cached features) and of fine-tuning."""
    import jax
    import jax.numpy as jnp

    from core import experiment
    from core import mesh as mesh_lib
    from core.datasets.fake_idx import write_fake_idx_dataset
    from transfer import features as features_lib
    from transfer import networks
    from transfer import params as params_lib
    from transfer import runner

    if epochs < 1:
        raise app.UsageError(f"--epochs must be >= 1, got {epochs}")
    with tempfile.TemporaryDirectory(prefix="transfer_speed_") as tmp:
        data_dir = os.path.join(tmp, "mnist")
        write_fake_idx_dataset(data_dir, n_train=examples, n_test=test_examples, gzip=False)
        source = os.path.join(tmp, "source.npz")
        net = networks.make_classifier("lenet", NUM_CLASSES, 4)
        params_lib.save_npz(source, net.init(jax.random.PRNGKey(1), jnp.zeros((1, 28, 28, 1)),
                                             train=False)["params"])

        def config(strategy: str) -> runner.TransferRunConfig:
            cfg = runner.TransferRunConfig(
                workdir=os.path.join(tmp, strategy), data_dir=data_dir, dataset="mnist",
                network="lenet", strategy=strategy, source_params=source, batch_size=batch,
                learning_rate=LEARNING_RATE, val_size=0, eval_every=0, conv_impl=conv_impl,
                progress=False)
            cfg.validate()
            return cfg

        configs = {s: config(s) for s in ("finetune", "feature_extraction")}
        ft = configs["finetune"]
        mesh = mesh_lib.make_mesh(experiment.choose_devices(ft.sharded_batch(), ft.num_devices))
        # The one-off cost on its own: the call runner.prepare makes for feature extraction
        # (a fresh workdir has no checkpoint, so the features come from the initial params).
        target = runner.prepare(ft, mesh)
        t0 = time.perf_counter()
        features_lib.extract_features(target.model, target.initial.params, target.data.splits,
                                      ft.resolved_eval_batch_size, mesh)
        extract_s = time.perf_counter() - t0
        rows = {}
        for strategy, cfg in configs.items():
            t0 = time.perf_counter()
            program = runner.build(cfg, mesh)
            build_s = time.perf_counter() - t0
            compiled, state, _, compile_s, times = cpu.time_step(
                program.train_step, program.state, program.batch_fn(0), steps, warmup)
            steps_per_epoch = program.summary["num_train_examples"] // batch
            _, epoch_times = _time_epochs(compiled, state, program.batch_fn, steps_per_epoch,
                                          epochs)
            stats = cpu.step_stats(times, compile_s)
            del stats["peak_rss_mb"]  # the process's so far: reported once, for both
            rows[strategy] = {**stats, "build_s": build_s,
                              "steps_per_epoch": steps_per_epoch,
                              "sec_per_epoch": statistics.median(epoch_times),
                              "sec_per_epoch_min": min(epoch_times)}
        rows["feature_extraction"]["extract_s"] = extract_s
    fe, ft = rows["feature_extraction"], rows["finetune"]
    return {"kind": "epoch", "network": "lenet", "examples": examples,
            "test_examples": test_examples, "batch": batch, "epochs": epochs,
            "conv_impl": target.conv_impl, "feature_extraction": fe, "finetune": ft,
            "epoch_ratio": ft["sec_per_epoch"] / fe["sec_per_epoch"],
            "step_ratio": ft["ms_per_step"] / fe["ms_per_step"],
            "peak_rss_mb": cpu.peak_rss_mb()}


def _epoch_table(r: dict) -> str:
    lines = ["| strategy | ms/step | min ms | s/epoch | steps/epoch | compile s | one-off s |",
             "|---|---|---|---|---|---|---|"]
    for name in ("feature_extraction", "finetune"):
        s = r[name]
        one_off = f"{s['extract_s']:.2f}" if "extract_s" in s else "-"
        lines.append(f"| {name} | {s['ms_per_step']:.3f} | {s['ms_per_step_min']:.3f} | "
                     f"{s['sec_per_epoch']:.3f} | {s['steps_per_epoch']} | "
                     f"{s['compile_s']:.1f} | {one_off} |")
    lines.append(f"\nfinetune / feature_extraction: {r['epoch_ratio']:.1f}x per epoch, "
                 f"{r['step_ratio']:.1f}x per step ({r['examples']} images, batch {r['batch']}, "
                 f"{r['conv_impl']})")
    return "\n".join(lines)


def _step_header() -> str:
    return ("| model | step | ms/step | min ms | compile s | peak RSS MB | peer best ms "
            "(setting) | speed-up |\n|---|---|---|---|---|---|---|---|")


def _step_row(r: dict, peer: tuple[float, str] | None = None) -> str:
    peer_cells = (f"{peer[0]:.2f} ({peer[1]}) | {peer[0] / r['ms_per_step']:.2f}x" if peer
                  else "- | -")
    return (f"| {r['model']} | {r['step_impl']} | {r['ms_per_step']:.2f} | "
            f"{r['ms_per_step_min']:.2f} | {r['compile_s']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{peer_cells} |")


def _own_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.transfer_speed", *args, f"--batch={FLAGS.batch}",
            f"--steps={FLAGS.steps}", f"--warmup={FLAGS.warmup}", f"--threads={FLAGS.threads}",
            f"--conv_impl={FLAGS.conv_impl}", f"--malloc_tuning={FLAGS.malloc_tuning}"]


def _peer(model: str, variant: str) -> dict | None:
    """One run of the peer at one setting, as a row with `ms_per_step`."""
    cmd = [FLAGS.peer_python, FLAGS.peer_script, "--config", model, "--batch", str(FLAGS.batch),
           "--steps", str(FLAGS.steps), "--warmup", str(FLAGS.warmup + 1),  # + its first step
           "--threads", str(FLAGS.threads), *PEER_VARIANTS[variant]]
    env = dict(os.environ)
    if FLAGS.peer_omp_wait_policy:
        env["OMP_WAIT_POLICY"] = FLAGS.peer_omp_wait_policy
    row = cpu.measure_in_subprocess(cmd, env)
    if row is None:
        return None
    return dict(row, kind="peer", model=model, variant=variant,
                ms_per_step=1000 * row["sec_per_step"], ms_per_step_min=1000 * row["min"])


def _median_of(rows: list[dict], **match) -> dict | None:
    """The row of median ms_per_step among `rows` matching every `match` item."""
    return cpu.median_row([r for r in rows if all(r.get(k) == v for k, v in match.items())])


def _table() -> None:
    unknown = set(FLAGS.peer_variants) - set(PEER_VARIANTS)
    if unknown:
        raise app.UsageError(f"unknown --peer_variants {sorted(unknown)}")
    rows = []

    def run(row: dict | None, **tags) -> None:
        if row is not None:
            rows.append(dict(row, **tags))
            print(json.dumps(rows[-1]), flush=True)

    for round_ in range(FLAGS.rounds):
        if FLAGS.table_epoch:
            run(cpu.measure_in_subprocess(_own_cmd(
                "--mode=epoch", f"--examples={FLAGS.examples}",
                f"--test_examples={FLAGS.test_examples}", f"--epochs={FLAGS.epochs}")),
                round=round_)
        for model in FLAGS.table_models:
            if FLAGS.peer_python:
                for variant in FLAGS.peer_variants:
                    run(_peer(model, variant), round=round_)
            for impl in FLAGS.table_step_impls:
                run(cpu.measure_in_subprocess(_own_cmd("--mode=step", f"--model={model}",
                                                       f"--step_impl={impl}")), round=round_)
    epochs = sorted((r for r in rows if r["kind"] == "epoch"), key=lambda r: r["epoch_ratio"])
    if epochs:
        print("\n" + _epoch_table(epochs[(len(epochs) - 1) // 2]))  # the median ratio's round
    lines = [_step_header()]
    for model in FLAGS.table_models:
        peers = [p for p in (_median_of(rows, kind="peer", model=model, variant=v)
                             for v in FLAGS.peer_variants) if p is not None]
        best = min(peers, key=lambda p: p["ms_per_step"]) if peers else None
        for impl in FLAGS.table_step_impls:
            ours = _median_of(rows, kind="step", model=model, step_impl=impl)
            if ours is not None:
                lines.append(_step_row(ours, (best["ms_per_step"], best["variant"])
                                       if best else None))
    print("\n" + "\n".join(lines) + f"\n(medians over {FLAGS.rounds} round(s), "
          f"batch {FLAGS.batch}, {FLAGS.threads} threads)")
    print(json.dumps(rows))


def _measure() -> dict:
    if FLAGS.mode == "epoch":
        return measure_epoch(FLAGS.examples, FLAGS.test_examples, FLAGS.batch, FLAGS.epochs,
                             FLAGS.steps, FLAGS.warmup, FLAGS.conv_impl)
    return measure_step(FLAGS.model, FLAGS.step_impl, FLAGS.batch, FLAGS.steps, FLAGS.warmup,
                        FLAGS.conv_impl)


def _render(result: dict) -> str:
    if result["kind"] == "epoch":
        return _epoch_table(result)
    return _step_header() + "\n" + _step_row(result)


def main(argv):
    del argv
    cpu.run_main(FLAGS, _table, _measure, _render)


if __name__ == "__main__":
    app.run(main)
