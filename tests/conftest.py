"""Test-wide JAX set-up: 4 fake CPU devices for the few multi-device tests.

Most tests run on one device (unsharded jit uses device 0); tests that need a
mesh build it explicitly. CPU collectives can hang on a busy 2-core machine,
so multi-device tests carry a timeout mark.
"""

import jax

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_platforms", "cpu")
