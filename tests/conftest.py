"""Test-wide JAX setup: 8 simulated CPU devices and the highest matmul precision.

XLA reads XLA_FLAGS once, when the backend starts, so this runs before any test imports JAX.
"""

import os

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
