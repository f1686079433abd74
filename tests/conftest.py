"""Test-wide JAX setup: 8 simulated CPU devices and the highest matmul precision.

XLA reads XLA_FLAGS once, when the backend starts, so this runs before any test imports JAX.
"""

import os
import tempfile

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A persistent compilation cache shared by the test processes and the subprocesses they start (they
# inherit the variable): a jitted function that several tests (or a killed and a resumed training
# run) compile identically is compiled once. Entries are keyed by the HLO and the flags, so reuse
# never changes results; only compilations slower than 1 s are stored.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "hfpl_jax_test_jit_cache")
)

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
