"""Test-wide JAX set-up: 4 fake CPU devices for the few multi-device tests.

Most tests run on one device (unsharded jit uses device 0); tests that need a
mesh build it explicitly. CPU collectives can hang on a busy 2-core machine,
so multi-device tests carry a timeout mark.

Most of the suite's time is XLA compiling small programs, so in-process tests
compile with most XLA optimisations off (as flax's example tests do); a test
that measures compiled memory turns them back on for itself
(`xla_optimizations` fixture). Entry-point tests run in subprocesses, with the
default settings.
"""

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def xla_optimizations():
    """XLA's optimisations on, for a test that measures what the compiler makes of a program."""
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", True)
