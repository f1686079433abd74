"""Argument checks shared by the pure ``jax.numpy`` modules (``pooling``, ``losses``,
``feature_similarity``): a bad argument raises ``ValueError`` naming it, the layout expected and
what was found. Private: imported by those modules, not by users.
"""

from __future__ import annotations

import math
import operator

import jax
import jax.numpy as jnp
import numpy as np


def shape_str(shape) -> str:
    """``(2, 3)`` for a shape tuple (also for 1-d shapes, where ``str`` would print ``(2,)``)."""
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_array(name: str, x, *, ndim: int | None = None, layout: str = "", floating=True):
    """Returns ``x`` as a jax array after checking its rank and dtype.

    Raises:
      ValueError: naming ``name``, the expected layout and the shape or dtype found.
    """
    try:
        x = jnp.asarray(x)
    except TypeError as e:
        raise ValueError(f"{name}: expected an array {layout}, got {type(x).__name__}") from e
    if ndim is not None and x.ndim != ndim:
        raise ValueError(
            f"{name}: expected a {ndim}-d array {layout}, got shape {shape_str(x.shape)}"
        )
    if floating and not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{name}: expected a floating-point array {layout}, got dtype {x.dtype} "
            f"(shape {shape_str(x.shape)})"
        )
    return x


def compute_dtype(*arrays) -> jnp.dtype:
    """The dtype arithmetic runs in: at least float32 (float64 stays float64 under x64)."""
    return jnp.result_type(jnp.float32, *[a.dtype for a in arrays])


def positive_int(name: str, value) -> int:
    """``value`` as a Python int (NumPy integers accepted); ``ValueError`` unless it is >= 1."""
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected a positive int, got {value!r}") from None
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def static_real(
    name: str, value, *, allow_none=False, positive=False, allow_inf=False
) -> float | None:
    """``value`` as a Python float: a static configuration number, never a traced array.

    Raises:
      ValueError: naming ``name`` for a traced value, NaN, an infinity (unless ``allow_inf``) or,
        with ``positive``, a value <= 0.
    """
    if value is None and allow_none:
        return None
    try:
        v = float(value)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        raise ValueError(f"{name}: expected a Python number (a static value), got {value!r}") from e
    if math.isnan(v) or (math.isinf(v) and not allow_inf) or (positive and v <= 0):
        need = "a positive number" if positive else "a finite number"
        raise ValueError(f"{name}: expected {need}, got {value!r}")
    return v
