"""Building blocks shared by the models, with PyTorch's semantics (NHWC layout).

- ``Conv2d``: explicit symmetric padding (PyTorch's ``padding=p`` pads ``p`` on both sides; Flax's
  ``'SAME'`` pads ``(0, 1)`` on even sizes for strided convs, which gives the same shape but
  different values). Kernel ``(kh, kw, in, out)`` (HWIO), the transpose ``(2, 3, 1, 0)`` of
  PyTorch's OIHW. Two implementations of the same function (``conv2d``, ``CONV_IMPLS``): XLA's
  convolution, or a matrix product (1x1: one dot; kxk: im2col + one dot), the faster one on CPU
  for 1x1 and deep kxk layers, where XLA's dot is much better tuned than its convolution
  (``resolve_conv_impl``).
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

import dataclasses
import functools
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


# Backbone convolution initialisers (``conv_init``): "torch" is PyTorch's default ``Conv2d`` init,
# what the reference's backbones start from before the ImageNet weights replace it; its variance
# 1/(3 fan_in) shrinks the signal through every conv when nothing renormalises it (frozen BN from
# random weights); "he_normal", N(0, 2/fan_in), which keeps it O(1), is the option for such runs.
CONV_INITS = ("torch", "he_normal")


def check_conv_init(conv_init: str) -> None:
    if conv_init not in CONV_INITS:
        raise ValueError(f"conv_init must be one of {CONV_INITS}, found {conv_init!r}")


def backbone_kernel_init(conv_init: str) -> Initializer:
    """The kernel initialiser named by ``conv_init`` (``CONV_INITS``)."""
    check_conv_init(conv_init)
    return torch_default_kernel_init() if conv_init == "torch" else kaiming_normal("fan_in")


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


CONV_IMPLS = ("auto", "xla", "dot")


def check_conv_impl(conv_impl: str) -> None:
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, found {conv_impl!r}")


# "auto" on CPU: the smallest contraction depth k*k*C_in at which a k x k convolution goes through
# im2col + dot (BENCHMARKS.md, "CAM training step": below it the patches, k*k times the input, cost
# more memory traffic than XLA's convolution loses; 1x1 convolutions are always a dot).
AUTO_DOT_MIN_DEPTH = 4096


def resolve_conv_impl(conv_impl: str, kernel_shape: tuple[int, ...] | None = None) -> str:
    """The implementation ``conv2d`` uses for ``conv_impl`` and an HWIO ``kernel_shape``.

    "xla" and "dot" are used as given. "auto" is decided when the function is traced: on CPU
    (``jax.default_backend() == "cpu"``) "dot" for 1x1 kernels and for k x k kernels with
    ``k * k * C_in >= AUTO_DOT_MIN_DEPTH`` (the deep ResNet-38 layers, where XLA's CPU convolution
    is 1.2-1.7x slower than PyTorch's oneDNN kernels while XLA's dot is fast), "xla" for the other
    k x k kernels (large maps with few channels, where the k*k-times larger patches cost more
    memory traffic than the convolution) and on every other backend: on GPU and TPU the
    convolution (cuDNN, the TPU's own) is the fast path and im2col would only add memory traffic.
    Without ``kernel_shape``, "auto" on CPU resolves to "dot".
    """
    check_conv_impl(conv_impl)
    if conv_impl != "auto":
        return conv_impl
    if jax.default_backend() != "cpu":
        return "xla"
    if kernel_shape is None:
        return "dot"
    k, _, in_features, _ = kernel_shape
    return "dot" if k == 1 or k * k * in_features >= AUTO_DOT_MIN_DEPTH else "xla"


def conv_output_size(size: int, kernel_size: int, stride: int, padding: int, dilation: int) -> int:
    """``floor((size + 2 p - d (k - 1) - 1) / s) + 1``, PyTorch's output length of one axis."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def im2col(x: Array, kernel_size: int, stride: int, padding: int, dilation: int) -> Array:
    """Patches of a convolution: ``(N, H, W, C) -> (N, Ho, Wo, k * k * C)``.

    ``patches[n, i, j, (a * k + b) * C + c] = x_pad[n, s*i + d*a, s*j + d*b, c]``: the ``k * k``
    strided, shifted views of the zero-padded input, concatenated on the channel axis in the
    row-major order of an HWIO kernel's first three axes, so that
    ``conv(x, kernel) == patches @ kernel.reshape(k * k * C, O)``.
    """
    n, h, w, c = x.shape
    k, s, d = kernel_size, stride, dilation
    out_h = conv_output_size(h, k, s, padding, d)
    out_w = conv_output_size(w, k, s, padding, d)
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"conv2d: input {h}x{w} too small for kernel {k}, dilation {d}, padding {padding}"
        )
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    views = [
        jax.lax.slice(
            x,
            (0, d * a, d * b, 0),
            (n, d * a + s * (out_h - 1) + 1, d * b + s * (out_w - 1) + 1, c),
            (1, s, s, 1),
        )
        for a in range(k)
        for b in range(k)
    ]
    return views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)


def _patches_dot(x: Array, kernel: Array, stride: int, padding: int, dilation: int) -> Array:
    patches = im2col(x, kernel.shape[0], stride, padding, dilation)
    n, out_h, out_w, depth = patches.shape
    y = jnp.dot(patches.reshape(n * out_h * out_w, depth), kernel.reshape(depth, -1))
    return y.reshape(n, out_h, out_w, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_via_im2col(x, kernel, stride, padding, dilation):
    return _patches_dot(x, kernel, stride, padding, dilation)


def _conv_via_im2col_fwd(x, kernel, stride, padding, dilation):
    # The patches are k*k times the input: save the input and rebuild them in the backward pass (a
    # few copies, cheap next to the dots), so that training memory is that of a convolution.
    return _patches_dot(x, kernel, stride, padding, dilation), (x, kernel)


def _conv_via_im2col_bwd(stride, padding, dilation, residuals, dy):
    x, kernel = residuals
    # Make the rebuild depend on the cotangent, or XLA merges it with the forward pass's patches
    # (common-subexpression elimination) and keeps every layer's patches alive until its backward:
    # k*k times the activation memory. An optimization barrier does not stop that on CPU (XLA's CPU
    # pipeline removes barriers before CSE), so add an exact zero computed from ``dy`` (``isnan``
    # is 0 or 1, and a float product with 0 is not folded away). ``x + 0 == x`` up to the sign of
    # zeros, which no sum or product here can tell apart.
    x = x + jnp.isnan(dy.reshape(-1)[0]).astype(x.dtype) * jnp.zeros((), x.dtype)
    k, _, _, out_features = kernel.shape
    patches, patches_vjp = jax.vjp(lambda v: im2col(v, k, stride, padding, dilation), x)
    depth = patches.shape[-1]
    dy2 = dy.reshape(-1, out_features)
    kernel_grad = jnp.dot(patches.reshape(-1, depth).T, dy2).reshape(kernel.shape)
    patches_grad = jnp.dot(dy2, kernel.reshape(depth, out_features).T).reshape(patches.shape)
    (x_grad,) = patches_vjp(patches_grad)
    return x_grad, kernel_grad


_conv_via_im2col.defvjp(_conv_via_im2col_fwd, _conv_via_im2col_bwd)


def conv2d(
    x: Array,
    kernel: Array,
    *,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    impl: str = "auto",
) -> Array:
    """PyTorch's ``conv2d`` in NHWC/HWIO, without bias (see ``Conv2d``); ``impl`` in ``CONV_IMPLS``.

    ``y[n, i, j, o] = sum_{a,b,c} x_pad[n, s*i + d*a, s*j + d*b, c] * kernel[a, b, c, o]``, input
    ``(N, H, W, C)``, kernel ``(k, k, C, O)``, output ``(N, Ho, Wo, O)`` (``conv_output_size``), in
    the common dtype of ``x`` and ``kernel``, at the default matmul precision (so
    ``jax_default_matmul_precision='highest'`` gives float32-accurate results either way).
    "xla": ``lax.conv_general_dilated``; "dot": ``im2col(x) @ kernel.reshape(k*k*C, O)`` (for 1x1,
    just the strided input); "auto": ``resolve_conv_impl(impl, kernel.shape)``.
    """
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[2] != x.shape[-1]:
        raise ValueError(
            f"conv2d: kernel must be (k, k, {x.shape[-1]}, out) for input {x.shape}, "
            f"found {kernel.shape}"
        )
    impl = resolve_conv_impl(impl, kernel.shape)
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(stride, stride),
            padding=((padding, padding), (padding, padding)),
            rhs_dilation=(dilation, dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    if kernel.shape[0] == 1:
        # No expansion: autodiff of the dot saves the (strided) input, as a convolution would.
        return _patches_dot(x, kernel, stride, padding, dilation)
    return _conv_via_im2col(x, kernel, stride, padding, dilation)


class Conv2d(nn.Module):
    """2-D convolution with PyTorch's padding/dilation semantics (``conv2d`` plus a bias).

    ``y[n, i, j, o] = sum_{a,b,c} x_pad[n, s*i + d*a, s*j + d*b, c] * kernel[a, b, c, o] + bias[o]``
    with ``x_pad`` padded by ``padding`` zeros on every side. Input ``(N, H, W, C_in)``, output
    ``(N, floor((H + 2p - d*(k-1) - 1)/s) + 1, ..., features)``. ``conv_impl`` picks how it is
    computed (``resolve_conv_impl``); parameters and results do not depend on it.
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
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_features = x.shape[-1]
        k = self.kernel_size
        kernel_init = self.kernel_init or torch_default_kernel_init()
        kernel = self.param("kernel", kernel_init, (k, k, in_features, self.features), jnp.float32)
        y = conv2d(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            impl=self.conv_impl,
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


class LayerOptions(nn.Module):
    """Base of the blocks and models: keyword-only compute options and the layers made with them.

    ``bn_momentum`` (Flax convention), ``dtype`` (compute dtype), ``conv_impl`` (``CONV_IMPLS``)
    and ``conv_init`` (``CONV_INITS``, for convolutions given no ``kernel_init`` of their own) go
    to every ``Conv2d`` / ``BatchNorm`` that ``conv`` / ``norm`` create. Call those from a
    ``@nn.compact`` method: the layers become children of the calling module.
    """

    _: dataclasses.KW_ONLY
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32
    conv_impl: str = "auto"
    conv_init: str = "torch"

    def layer_options(self) -> dict:
        """``{"bn_momentum", "dtype", "conv_impl", "conv_init"}`` of this module, to pass on to a
        child block."""
        return {name: getattr(self, name) for name in LAYER_OPTIONS}

    def conv(self, features: int, kernel_size: int = 1, stride: int = 1, **kwargs) -> Conv2d:
        """A ``Conv2d`` in this module's dtype and conv implementation (``kwargs``: padding ...),
        initialised per ``conv_init`` unless ``kwargs`` name a ``kernel_init``."""
        kwargs.setdefault("kernel_init", backbone_kernel_init(self.conv_init))
        return Conv2d(
            features, kernel_size, stride, dtype=self.dtype, conv_impl=self.conv_impl, **kwargs
        )

    def norm(self, name: str) -> BatchNorm:
        """A ``BatchNorm`` with this module's momentum and dtype."""
        return BatchNorm(momentum=self.bn_momentum, dtype=self.dtype, name=name)


LAYER_OPTIONS = ("bn_momentum", "dtype", "conv_impl", "conv_init")
MODEL_OPTIONS = ("width", "blocks", "batch_norm", "dropout", *LAYER_OPTIONS)


class ModelOptions(LayerOptions):
    """Base of the models (keyword-only fields, the options of ``hfpl_jax.models.build``).

    Attributes:
      width, blocks: model size (``scaled_channels``; blocks per stage, ``None`` = full).
      batch_norm: "frozen" or "batch" (``use_running_average``).
      dropout: False turns every dropout layer off, also when training.
      bn_momentum, dtype, conv_impl, conv_init: see ``LayerOptions``.
    """

    _: dataclasses.KW_ONLY
    width: float = 1.0
    blocks: tuple | None = None
    batch_norm: str = "frozen"
    dropout: bool = True

    def model_options(self) -> dict:
        """This module's ``MODEL_OPTIONS`` fields, e.g. for ``resnet38_trunk`` or a backbone."""
        return {name: getattr(self, name) for name in MODEL_OPTIONS}

    def channels(self, full: int) -> int:
        """``scaled_channels(full, self.width)``."""
        return scaled_channels(full, self.width)


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
