"""The im2col convolution equals XLA's, and 'SAME' padding follows TensorFlow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import conv


@pytest.mark.parametrize("size,strides,cin", [(28, (2, 2), 1), (14, (2, 2), 8), (7, (2, 2), 4),
                                              (4, (2, 2), 3), (84, (1, 1), 3), (9, (1, 1), 2)])
def test_im2col_equals_xla_convolution(size, strides, cin):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, size, size, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, cin, 5)), jnp.float32)
    a = conv.conv2d_xla(x, k, strides)
    b = conv.conv2d_im2col(x, k, strides)
    assert a.shape == (3, -(-size // strides[0]), -(-size // strides[1]), 5)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_im2col_gradients_equal_xla_under_vmap_with_per_task_kernels():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 2, 14, 14, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(4, 3, 3, 3, 6)), jnp.float32)
    def loss(impl):
        return lambda k: jnp.sum(jnp.sin(jax.vmap(lambda xi, ki: conv.conv2d(xi, ki, (2, 2),
                                                                           impl))(x, k)))
    np.testing.assert_allclose(jax.grad(loss("xla"))(k), jax.grad(loss("im2col"))(k),
                               rtol=1e-4, atol=1e-4)


def test_same_padding_matches_tensorflow():
    assert conv.same_padding(28, 3, 2) == (0, 1)
    assert conv.same_padding(7, 3, 2) == (1, 1)
    assert conv.same_padding(84, 3, 1) == (1, 1)


def test_default_impl_per_backend_and_unknown_impl():
    assert conv.default_conv_impl("cpu") == "im2col"
    assert conv.default_conv_impl("gpu") == "xla"
    assert conv.default_conv_impl("tpu") == "xla"
    with pytest.raises(ValueError, match="unknown conv implementation"):
        conv.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), (1, 1), "fft")


@pytest.mark.parametrize("size,kernel,strides", [(28, 5, (1, 1)), (12, 5, (1, 1)),
                                                 (9, 3, (2, 2)), (10, 3, (2, 1))])
def test_valid_padding_im2col_equals_xla_and_lax(size, kernel, strides):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 4)), jnp.float32)
    expected = jax.lax.conv_general_dilated(x, k, strides, "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert expected.shape == (2, (size - kernel) // strides[0] + 1,
                              (size - kernel) // strides[1] + 1, 4)
    for impl in conv.CONV_IMPLS:
        np.testing.assert_allclose(conv.conv2d(x, k, strides, impl, padding="VALID"), expected,
                                   rtol=1e-5, atol=1e-5, err_msg=impl)
    # The default stays 'SAME'.
    assert conv.conv2d_im2col(x, k, strides).shape[1] == -(-size // strides[0])
    with pytest.raises(ValueError, match="unknown padding"):
        conv.conv2d(x, k, strides, "im2col", padding="FULL")
