"""Building blocks shared by the models, with PyTorch's semantics (NHWC layout).

- ``Conv2d``: explicit symmetric padding (PyTorch's ``padding=p`` pads ``p`` on both sides; Flax's
  ``'SAME'`` pads ``(0, 1)`` on even sizes for strided convs, which gives the same shape but
  different values). Kernel ``(kh, kw, in, out)`` (HWIO), the transpose ``(2, 3, 1, 0)`` of
  PyTorch's OIHW.
- ``BatchNorm``: ``y = (x - mean) / sqrt(var + eps) * scale + bias`` per channel, in float32
  (float64 when the compute dtype is float64).
  With batch statistics (``use_running_average=False``) ``mean`` and ``var`` are the biased moments
  over (N, H, W) of the *global* batch (a ``jnp.mean`` over a sharded array is global under
  ``jax.jit``), and the running statistics follow PyTorch:
  ``running <- momentum * running + (1 - momentum) * batch`` (Flax convention: momentum 0.9 is
  PyTorch's 0.1), with the *unbiased* batch variance ``var * n / (n - 1)`` for ``running_var``
  (PyTorch's rule; Flax's own ``nn.BatchNorm`` uses the biased one). ``num_batches_tracked``
  (an int32 counter) mirrors PyTorch's buffer so that a state dict round-trips exactly.
- ``Dropout2d``: zeroes whole channels per sample with probability ``rate`` and scales the kept ones
  by ``1 / (1 - rate)`` (PyTorch ``nn.Dropout2d``); rng stream ``"dropout"``.
- Initialisers matching PyTorch's: the default ``Conv2d`` init (kaiming-uniform with a = sqrt(5),
  i.e. U(+-1/sqrt(fan_in)) for the weight and for the bias), untruncated ``kaiming_normal_`` and
  ``xavier_uniform_`` with a gain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]

BATCH_NORM_MODES = ("frozen", "batch")


def torch_default_kernel_init() -> Initializer:
    """PyTorch's default conv weight init: U(-b, b), b = 1/sqrt(fan_in), fan_in = in*kh*kw."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def kaiming_normal(mode: str = "fan_in") -> Initializer:
    """``torch.nn.init.kaiming_normal_`` (ReLU gain): N(0, 2/fan), untruncated."""
    return nn.initializers.variance_scaling(2.0, mode, "normal")


def xavier_uniform(gain: float = 1.0) -> Initializer:
    """``torch.nn.init.xavier_uniform_``: U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out))."""
    return nn.initializers.variance_scaling(gain * gain, "fan_avg", "uniform")


def torch_default_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default conv bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def output_dtype(dtype) -> Any:
    """The dtype of normalisation and model outputs: ``dtype`` promoted to at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def scaled_channels(channels: int, width: float) -> int:
    """Channel count of a layer in a model of relative width ``width``: max(1, round(c * width))."""
    return max(1, int(round(channels * width)))


class Conv2d(nn.Module):
    """2-D convolution with PyTorch's padding/dilation semantics.

    ``y[n, i, j, o] = sum_{a,b,c} x_pad[n, s*i + d*a, s*j + d*b, c] * kernel[a, b, c, o] + bias[o]``
    with ``x_pad`` padded by ``padding`` zeros on every side. Input ``(N, H, W, C_in)``, output
    ``(N, floor((H + 2p - d*(k-1) - 1)/s) + 1, ..., features)``.
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    use_bias: bool = False
    kernel_init: Initializer | None = None
    bias_init: Initializer | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_features = x.shape[-1]
        k = self.kernel_size
        kernel_init = self.kernel_init or torch_default_kernel_init()
        kernel = self.param("kernel", kernel_init, (k, k, in_features, self.features), jnp.float32)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=(self.stride, self.stride),
            padding=((self.padding, self.padding), (self.padding, self.padding)),
            rhs_dilation=(self.dilation, self.dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            bias_init = self.bias_init or torch_default_bias_init(in_features * k * k)
            bias = self.param("bias", bias_init, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


class BatchNorm(nn.Module):
    """PyTorch ``nn.BatchNorm2d`` over the last axis; see the module docstring for the equations.

    Attributes:
      momentum: Flax convention (weight of the old running value): 1 - PyTorch momentum.
      epsilon: added to the variance (PyTorch default 1e-5).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool) -> Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        running_mean = self.variable(
            "batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32)
        )
        running_var = self.variable(
            "batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32)
        )
        num_batches = self.variable(
            "batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32)
        )
        compute = output_dtype(self.dtype)
        xf = x.astype(compute)
        if use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axis=axes)
            # Two-pass variance, as PyTorch computes it (not E[x^2] - E[x]^2).
            var = jnp.mean(jnp.square(xf - mean), axis=axes)
            if not self.is_initializing():
                count = int(np.prod([x.shape[a] for a in axes]))
                unbiased = var * (count / max(count - 1, 1))
                m = self.momentum
                new_mean = m * running_mean.value + (1.0 - m) * jax.lax.stop_gradient(mean)
                new_var = m * running_var.value + (1.0 - m) * jax.lax.stop_gradient(unbiased)
                running_mean.value = new_mean.astype(running_mean.value.dtype)
                running_var.value = new_var.astype(running_var.value.dtype)
                num_batches.value = num_batches.value + 1
        y = (xf - mean.astype(compute)) * jax.lax.rsqrt(var.astype(compute) + self.epsilon)
        y = y * scale.astype(compute) + bias.astype(compute)
        return y.astype(self.dtype)


class Dropout2d(nn.Module):
    """Channel dropout (PyTorch ``nn.Dropout2d``) on ``(N, H, W, C)``: mask shape ``(N, 1, 1, C)``.

    ``y = x * m / (1 - rate)`` with ``m ~ Bernoulli(1 - rate)`` per (sample, channel); identity when
    ``deterministic`` or ``rate == 0``. Uses the ``"dropout"`` rng stream.
    """

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if x.ndim != 4:
            raise ValueError(f"Dropout2d expects (N, H, W, C), found shape {x.shape}")
        return nn.Dropout(self.rate, broadcast_dims=(1, 2))(x, deterministic=deterministic)


def check_batch_norm_mode(batch_norm: str) -> None:
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm must be one of {BATCH_NORM_MODES}, found {batch_norm!r}")


def use_running_average(batch_norm: str, train: bool) -> bool:
    """BN uses running statistics unless ``batch_norm == "batch"`` and the model is training."""
    return not (batch_norm == "batch" and train)


def check_images(images: Array, name: str = "images") -> None:
    """Raise ``ValueError`` unless ``images`` is a floating ``(N, H, W, 3)`` array."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be (N, H, W, 3) normalised RGB, found shape {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point (normalised), found dtype {images.dtype}")


def check_blocks(blocks: Sequence[int] | None, default: Sequence[int], name: str) -> tuple:
    """Validate a per-stage block-count tuple (None -> the full model's counts)."""
    if blocks is None:
        return tuple(default)
    blocks = tuple(int(b) for b in blocks)
    if len(blocks) != len(default) or min(blocks) < 1:
        raise ValueError(
            f"{name}: blocks must be {len(default)} positive counts per stage (full model "
            f"{tuple(default)}), found {blocks}"
        )
    return blocks
