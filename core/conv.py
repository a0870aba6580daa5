"""2-D convolutions with TensorFlow 'SAME' (or 'VALID') padding, in two interchangeable forms.

`conv2d_xla` calls XLA's convolution. `conv2d_im2col` gathers the k*k input
patches with strided slices and contracts them with the kernel in one matmul.
They compute the same function (tested to float tolerance); they differ in how
they behave under `jax.vmap` with a *batched kernel*, which is what MAML's
per-task adapted weights produce:

* XLA turns a vmapped convolution with per-task kernels into a grouped
  convolution (`feature_group_count` = number of tasks). GPU and TPU backends
  run those well; XLA:CPU runs them ~30x slower than one convolution per task.
* The im2col form turns per-task kernels into a batched matmul, which every
  backend runs well, at the cost of materialising the patches.

Which one a network uses is a plain attribute (`conv_impl`), chosen per backend
by `default_conv_impl()` and overridable by a flag.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

CONV_IMPLS = ("xla", "im2col")
PADDINGS = ("SAME", "VALID")


def default_conv_impl(backend: str | None = None) -> str:
    """The convolution form that is fastest for MAML on `backend`.

    Args:
      backend: a JAX platform name ('cpu', 'gpu', 'tpu'); the default backend
        when None.

    Returns:
      'im2col' on CPU, where grouped convolutions are slow; 'xla' elsewhere.
    """
    backend = backend or jax.default_backend()
    return "im2col" if backend == "cpu" else "xla"


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (low, high) for one spatial dimension.

    Args:
      size: input size along the dimension.
      kernel: kernel size.
      stride: stride.

    Returns:
      The (before, after) padding; 'after' gets the extra pixel when the total
      is odd, as in TensorFlow (and so in the reference MAML code).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pads(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """The (before, after) padding of one spatial dimension for 'SAME' or 'VALID'."""
    if padding == "SAME":
        return same_padding(size, kernel, stride)
    if padding == "VALID":
        return 0, 0
    raise ValueError(f"unknown padding {padding!r}; expected one of {PADDINGS}")


def conv2d_xla(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
               padding: str = "SAME") -> jax.Array:
    """NHWC convolution with an HWIO kernel and 'SAME' or 'VALID' padding, via XLA.

    Args:
      x: input [N, H, W, Cin].
      kernel: weights [kh, kw, Cin, Cout].
      strides: (sh, sw).
      padding: 'SAME' (TensorFlow's) or 'VALID' (none, as PyTorch's default).

    Returns:
      The output [N, ceil(H/sh), ceil(W/sw), Cout] ('SAME') or
      [N, (H - kh) // sh + 1, (W - kw) // sw + 1, Cout] ('VALID').
    """
    kh, kw = kernel.shape[:2]
    pads = (_pads(x.shape[1], kh, strides[0], padding),
            _pads(x.shape[2], kw, strides[1], padding))
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=tuple(strides), padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv2d_im2col(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                  padding: str = "SAME") -> jax.Array:
    """The same convolution as `conv2d_xla`, as patches followed by a matmul.

    The kh*kw shifted, strided views of the padded input are concatenated on
    the channel axis ([N, Ho, Wo, kh*kw*Cin], ordered (i, j, cin) like the
    kernel's HWI axes) and multiplied by the kernel reshaped to
    [kh*kw*Cin, Cout].

    Args:
      x: input [N, H, W, Cin].
      kernel: weights [kh, kw, Cin, Cout].
      strides: (sh, sw).
      padding: 'SAME' or 'VALID', as in `conv2d_xla`.

    Returns:
      The output, of the shape `conv2d_xla` gives.
    """
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    _, h, w, _ = x.shape
    pad_h = _pads(h, kh, sh, padding)
    pad_w = _pads(w, kw, sw, padding)
    xp = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    # Output size from the padded size: ceil(H / sh) for 'SAME', (H - kh) // sh + 1 for 'VALID'.
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    patches = [
        jax.lax.slice(xp, (0, i, j, 0),
                      (xp.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, cin),
                      (1, sh, sw, 1))
        for i in range(kh) for j in range(kw)
    ]
    patches = jnp.concatenate(patches, axis=-1)
    return patches @ kernel.reshape(kh * kw * cin, cout)


def conv2d(x: jax.Array, kernel: jax.Array, strides: Sequence[int], impl: str,
           padding: str = "SAME") -> jax.Array:
    """Dispatches to `conv2d_xla` or `conv2d_im2col` by name.

    Args:
      x: input [N, H, W, Cin].
      kernel: weights [kh, kw, Cin, Cout].
      strides: (sh, sw).
      impl: one of `CONV_IMPLS`.
      padding: one of `PADDINGS`.

    Returns:
      The convolution output.

    Raises:
      ValueError: for an unknown `impl` or `padding`.
    """
    if impl == "xla":
        return conv2d_xla(x, kernel, strides, padding)
    if impl == "im2col":
        return conv2d_im2col(x, kernel, strides, padding)
    raise ValueError(f"unknown conv implementation {impl!r}; expected one of {CONV_IMPLS}")
