"""Named augmentation pipelines for 28x28 grayscale images, and their transfer by name.

A pipeline is a pure, jittable `augment(key, x) -> x` on a float32 batch
[B, H, W, C] in [0, 1]: every example draws its own transformation from
`key`, nothing else. The runner applies it inside the jitted train step
(`wrap_step`) with the key of `step_key(seed, step)`, so the augmented batch
of a step is a pure function of (seed, step, batch) and a resumed run sees
exactly the views an uninterrupted one would. Validation and test images are
never augmented.

    name           what each training image gets
    none           nothing (the identity)
    shift          a translation by up to MAX_SHIFT pixels each way (whole
                   pixels, the border pixels repeated into the gap)
    rotate         a rotation by up to MAX_DEGREES either way about the centre
                   (bilinear, the border repeated)
    noise          additive Gaussian noise of std NOISE_STD, clipped to [0, 1]
    shift_rotate   rotate, then shift

No flips: a mirrored digit is another symbol (or none). Repeating the border
instead of filling with zeros keeps a white background white (inverted MNIST).

The "rule" of a source run transfers by name: `--augment=source` reads the
pipeline that the source run (or a distillation run's teacher) recorded in
its config.json (`resolve`); the run's transfer.json says which pipeline ran
and where the name came from.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

from core import run_dir
from core.errors import ConfigError, DataError

MAX_SHIFT = 2
MAX_DEGREES = 10.0
NOISE_STD = 0.1
FROM_SOURCE = "source"
PIPELINES: dict[str, tuple[str, ...]] = {
    "none": (),
    "shift": ("shift",),
    "rotate": ("rotate",),
    "noise": ("noise",),
    "shift_rotate": ("rotate", "shift"),
}
CHOICES = tuple(PIPELINES) + (FROM_SOURCE,)
# Folded into the run's seed before the step: augmentation keys never equal dropout keys.
_STREAM = 0x61756720
Augment = Callable[[jax.Array, jax.Array], jax.Array]


def _shift_one(key: jax.Array, image: jax.Array) -> jax.Array:
    """`image` [H, W, C] translated by a uniform whole-pixel offset in [-MAX_SHIFT, MAX_SHIFT]."""
    height, width, channels = image.shape
    offset = jax.random.randint(key, (2,), 0, 2 * MAX_SHIFT + 1)
    padded = jnp.pad(image, ((MAX_SHIFT, MAX_SHIFT), (MAX_SHIFT, MAX_SHIFT), (0, 0)),
                     mode="edge")
    return jax.lax.dynamic_slice(padded, (offset[0], offset[1], 0), (height, width, channels))


def _rotate_one(key: jax.Array, image: jax.Array) -> jax.Array:
    """`image` [H, W, C] rotated by a uniform angle in ±MAX_DEGREES (bilinear, border kept)."""
    height, width, _ = image.shape
    angle = jax.random.uniform(key, (), minval=-1.0, maxval=1.0) * math.radians(MAX_DEGREES)
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                              jnp.arange(width, dtype=jnp.float32), indexing="ij")
    centre_r, centre_c = (height - 1) / 2, (width - 1) / 2
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # The output pixel (r, c) reads the input at the inverse rotation of (r, c).
    src_r = centre_r + cos * (rows - centre_r) - sin * (cols - centre_c)
    src_c = centre_c + sin * (rows - centre_r) + cos * (cols - centre_c)
    channel = lambda plane: ndimage.map_coordinates(plane, [src_r, src_c], order=1,
                                                    mode="nearest")
    return jax.vmap(channel, in_axes=-1, out_axes=-1)(image)


def _noise_one(key: jax.Array, image: jax.Array) -> jax.Array:
    """`image` plus Gaussian noise of std NOISE_STD, clipped to [0, 1]."""
    noise = NOISE_STD * jax.random.normal(key, image.shape, image.dtype)
    return jnp.clip(image + noise, 0.0, 1.0)


_OPS = {"shift": _shift_one, "rotate": _rotate_one, "noise": _noise_one}


def pipeline(name: str) -> Augment:
    """The pure, jittable `augment(key, x [B, H, W, C]) -> x` of a pipeline name.

    Raises:
      ConfigError: for a name that is not in `PIPELINES`.
    """
    if name not in PIPELINES:
        raise ConfigError(f"unknown augmentation pipeline {name!r}; expected one of "
                          f"{', '.join(PIPELINES)}")
    ops = [_OPS[op] for op in PIPELINES[name]]

    def augment(key: jax.Array, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"augmentation needs images [B, H, W, C], got shape {x.shape}")
        for index, op in enumerate(ops):
            keys = jax.random.split(jax.random.fold_in(key, index), x.shape[0])
            x = jax.vmap(op)(keys, x)
        return x

    return augment


def step_key(seed: int, step: jax.Array) -> jax.Array:
    """The augmentation key of training step `step`: a pure function of (seed, step)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _STREAM), step)


def wrap_step(step: Callable, name: str, seed: int,
              image_keys: Sequence[str] = ("x",)) -> Callable:
    """`step(state, batch)` that first augments the batch's images (unchanged for 'none').

    Args:
      step: a pure train step `(state, batch) -> (state, metrics)`.
      name: the pipeline (`PIPELINES`).
      seed: the run's seed; the key of a step is `step_key(seed, state.step)`.
      image_keys: the batch entries holding images (e.g. DANN's 'target_x'
        too); each gets its own key.
    """
    if not PIPELINES[name]:
        return step
    augment = pipeline(name)

    def augmented(state, batch):
        key = step_key(seed, state.step)
        views = {k: augment(jax.random.fold_in(key, i), batch[k])
                 for i, k in enumerate(image_keys)}
        return step(state, dict(batch, **views))

    return augmented


def _recorded(workdir: str, role: str) -> str:
    """The pipeline a run directory's config.json names."""
    stored = run_dir.read_run_config(workdir)
    if stored is None:
        raise DataError(f"--augment=source: the {role} {workdir} has no config.json; is it a "
                        f"run directory of this library?")
    if "augment" not in stored:
        raise ConfigError(f"--augment=source: the {role} run {workdir} records no augmentation "
                          f"pipeline (its config.json has no 'augment': it was written before "
                          f"--augment existed, or by another family); name the pipeline, e.g. "
                          f"--augment=none")
    name = stored.get("resolved_augment") or stored["augment"]
    if name not in PIPELINES:
        raise DataError(f"--augment=source: the {role} run {workdir} records the pipeline "
                        f"{name!r}, which this code does not have ({', '.join(PIPELINES)})")
    return name


def resolve(augment: str, origin: tuple[str, str] | None) -> tuple[str, dict[str, Any]]:
    """(pipeline name, its transfer.json entry) of `--augment`.

    Args:
      augment: the flag: a pipeline name, or 'source'.
      origin: (role, run directory) the 'source' value reads from: the source
        run, or a distillation run's teacher; None when the run has no such
        run directory.

    Raises:
      ConfigError: 'source' without a run directory to read it from, or from a
        run that records no pipeline.
      DataError: the run directory's config.json is missing or names an
        unknown pipeline.
    """
    if augment != FROM_SOURCE:
        pipeline(augment)
        return augment, {"pipeline": augment, "from": "flag"}
    if origin is None:
        raise ConfigError("--augment=source reuses the pipeline of the source run (or of a "
                          "distillation run's teacher), but this run reads no run directory (no "
                          "--source_workdir, nor --teacher_workdir); name the pipeline")
    role, workdir = origin
    name = _recorded(workdir, role)
    return name, {"pipeline": name, "from": role, "run": workdir}
