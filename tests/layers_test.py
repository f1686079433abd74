"""The convolution implementations of ``hfpl_jax.models.layers``: "xla" and "dot" (im2col + dot).

Reference: a float64 NumPy convolution written from the definition
``y[n, i, j, o] = sum_{a,b,c} x_pad[n, s*i + d*a, s*j + d*b, c] * w[a, b, c, o]`` and its exact
gradients (``dw[a, b] = sum_{n,i,j} x_pad[n, s*i + d*a, s*j + d*b]^T dy[n, i, j]``; ``dx`` scatters
``dy @ w[a, b]^T`` back to the padded positions). Errors are ``max |got - want| / max |want|``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfpl_jax import models
from hfpl_jax.models import layers

# (kernel, stride, padding, dilation, input H x W): 1x1, 3x3, dilations 2 and 4 (ResNet-38 b5-b7),
# 12 (DeepLab's conv_fov, wider than the map), stride 2 (odd and even sizes), the 7x7 stem, and no
# padding.
CONFIGS = [
    (1, 1, 0, 1, (7, 5)),
    (1, 2, 0, 1, (7, 6)),
    (3, 1, 1, 1, (9, 7)),
    (3, 2, 1, 1, (9, 8)),
    (3, 2, 1, 1, (8, 8)),
    (3, 1, 2, 2, (9, 7)),
    (3, 1, 4, 4, (7, 9)),
    (3, 1, 12, 12, (5, 6)),
    (7, 2, 3, 1, (11, 9)),
    (3, 1, 0, 1, (6, 7)),
]
IN_FEATURES, OUT_FEATURES = 5, 4


def numpy_conv(x, w, stride, padding, dilation):
    """float64 convolution from the definition: ``(N, H, W, C), (k, k, C, O) -> (N, Ho, Wo, O)``."""
    k = w.shape[0]
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out_h = (x.shape[1] + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    out_w = (x.shape[2] + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    y = np.zeros((x.shape[0], out_h, out_w, w.shape[-1]))
    for i in range(out_h):
        for j in range(out_w):
            for a in range(k):
                for b in range(k):
                    pixel = xp[:, stride * i + dilation * a, stride * j + dilation * b]
                    y[:, i, j] += pixel @ w[a, b]
    return y


def numpy_conv_grads(x, w, dy, stride, padding, dilation):
    """Exact ``(dx, dw)`` of ``sum(y * dy)`` for ``y = numpy_conv(x, w, ...)``."""
    k = w.shape[0]
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for i in range(dy.shape[1]):
        for j in range(dy.shape[2]):
            for a in range(k):
                for b in range(k):
                    r, c = stride * i + dilation * a, stride * j + dilation * b
                    dw[a, b] += xp[:, r, c].T @ dy[:, i, j]
                    dxp[:, r, c] += dy[:, i, j] @ w[a, b].T
    h, wd = x.shape[1:3]
    return dxp[:, padding : padding + h, padding : padding + wd], dw


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _case(config, seed=0):
    k, _, _, _, (h, w) = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, h, w, IN_FEATURES))
    kernel = rng.standard_normal((k, k, IN_FEATURES, OUT_FEATURES)) / np.sqrt(k * k * IN_FEATURES)
    return x, kernel, rng


@pytest.mark.parametrize("impl", ["xla", "dot"])
def test_conv_impls_match_float64_definition(impl):
    """Forward and both gradients of every configuration at float32, 'highest' precision: 1e-5."""
    for config in CONFIGS:
        k, s, p, d, _ = config
        x, kernel, rng = _case(config)
        want = numpy_conv(x, kernel, s, p, d)
        dy = rng.standard_normal(want.shape)
        want_dx, want_dw = numpy_conv_grads(x, kernel, dy, s, p, d)

        def loss(x_, w_, s=s, p=p, d=d, dy=dy):
            y = layers.conv2d(x_, w_, stride=s, padding=p, dilation=d, impl=impl)
            return jnp.sum(y * dy.astype(np.float32)), y

        (dx, dw), y = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(
            jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32)
        )
        assert y.dtype == jnp.float32
        for name, got, ref in (("y", y, want), ("dx", dx, want_dx), ("dw", dw, want_dw)):
            assert rel_err(got, ref) <= 1e-5, (impl, config, name, rel_err(got, ref))


def test_bfloat16_compute():
    """bfloat16 inputs: both impls return bfloat16 within 2^-8 (one bf16 rounding of the output;
    measured 1.4e-3 to 3.0e-3) of float64 on the bf16-rounded inputs, and of each other."""
    for config in CONFIGS:
        k, s, p, d, _ = config
        x, kernel, _ = _case(config, seed=1)
        xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(kernel, jnp.bfloat16)
        want = numpy_conv(np.asarray(xb, np.float64), np.asarray(wb, np.float64), s, p, d)
        outs = {}
        for impl in ("xla", "dot"):
            conv = jax.jit(functools.partial(layers.conv2d, stride=s, padding=p, dilation=d,
                                             impl=impl))  # fmt: skip
            outs[impl] = conv(xb, wb)
            assert outs[impl].dtype == jnp.bfloat16
            assert rel_err(outs[impl], want) <= 2**-8, (impl, config, rel_err(outs[impl], want))
        assert rel_err(outs["dot"], outs["xla"]) <= 2**-8, config


def test_conv2d_module_parameters_do_not_depend_on_the_impl():
    """Same parameter tree and init values for every ``conv_impl``, and the same outputs."""
    x = jnp.asarray(np.random.default_rng(2).standard_normal((1, 9, 7, 3)), jnp.float32)
    results = {}
    for impl in layers.CONV_IMPLS:
        conv = layers.Conv2d(6, 3, 2, padding=2, dilation=2, use_bias=True, conv_impl=impl)
        variables = conv.init(jax.random.key(0), x)
        results[impl] = (variables, conv.apply(variables, x))
    for impl in ("xla", "dot"):
        jax.tree.map(np.testing.assert_array_equal, results[impl][0], results["auto"][0])
    assert rel_err(results["dot"][1], results["xla"][1]) <= 1e-5
    # "auto" on CPU: a 3x3 kernel on 3 channels (depth 27) stays XLA's convolution.
    np.testing.assert_array_equal(results["auto"][1], results["xla"][1])


def test_auto_rule_on_cpu():
    """On CPU "auto" is a dot for 1x1 kernels and k x k ones with k*k*C_in >= AUTO_DOT_MIN_DEPTH."""
    assert jax.default_backend() == "cpu" and layers.AUTO_DOT_MIN_DEPTH == 4096
    assert layers.resolve_conv_impl("auto", (1, 1, 3, 8)) == "dot"
    assert layers.resolve_conv_impl("auto", (3, 3, 512, 8)) == "dot"  # depth 4608
    assert layers.resolve_conv_impl("auto", (3, 3, 455, 8)) == "xla"  # depth 4095
    assert layers.resolve_conv_impl("auto", (7, 7, 3, 64)) == "xla"
    assert layers.resolve_conv_impl("auto") == "dot"
    for impl in ("xla", "dot"):
        assert layers.resolve_conv_impl(impl, (3, 3, 3, 8)) == impl


def test_conv_impl_validation():
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        layers.resolve_conv_impl("cudnn")
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        models.build("seam", 20, conv_impl="im2col")
    with pytest.raises(ValueError, match="kernel must be"):
        layers.conv2d(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 2, 1)), impl="dot")
    with pytest.raises(ValueError, match="too small"):
        layers.conv2d(jnp.zeros((1, 2, 2, 3)), jnp.zeros((3, 3, 3, 1)), impl="dot")


def test_dot_backward_keeps_convolution_memory():
    """The im2col backward rebuilds the patches instead of keeping them (k*k times the input) from
    the forward pass: per extra 3x3 layer in a chain, "dot" needs about as much more temporary
    memory as XLA's convolution (compiled-memory analysis, nothing is run). Keeping the patches
    would add one patch tensor per layer (6 for the 6 extra layers here)."""
    x = jax.ShapeDtypeStruct((2, 32, 32, 64), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.float32)
    patch_bytes = 2 * 32 * 32 * 9 * 64 * 4

    def temp_bytes(impl, depth):
        def loss(x_, w_):
            for _ in range(depth):
                x_ = jnp.tanh(layers.conv2d(x_, w_, padding=1, impl=impl))
            return jnp.sum(x_)

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    growth = {impl: temp_bytes(impl, 9) - temp_bytes(impl, 3) for impl in ("xla", "dot")}
    assert growth["dot"] <= growth["xla"] + patch_bytes, growth


def test_conv_init_sets_the_backbone_initialiser_and_keeps_the_heads():
    """conv_init="torch": U(+-1/sqrt(fan_in)) (variance 1/(3 fan_in)); "he_normal": N(0,
    2/fan_in). Heads keep their own initialisers either way (fc8: Xavier, gain 1)."""
    size = dict(width=0.5, blocks=(1, 1, 1, 1))
    torch_init = models.init_variables("seam", 20, jax.random.key(0), **size)["params"]
    he_init = models.init_variables("seam", 20, jax.random.key(0), conv_init="he_normal", **size)[
        "params"
    ]
    for path in (("b4", "conv_branch2a"), ("b7", "conv_branch2b1"), ("conv1a",)):
        kernel_torch, kernel_he = torch_init, he_init
        for key in path:
            kernel_torch, kernel_he = kernel_torch[key], kernel_he[key]
        kernel_torch, kernel_he = (
            np.asarray(kernel_torch["kernel"]),
            np.asarray(kernel_he["kernel"]),
        )
        fan_in = int(np.prod(kernel_torch.shape[:3]))
        bound = 1.0 / np.sqrt(fan_in)
        assert np.abs(kernel_torch).max() <= bound
        # Sample variances of >= 1,728 draws: within 15% of the stated variance.
        assert abs(kernel_torch.var() * 3 * fan_in - 1) < 0.15, path
        assert abs(kernel_he.var() * fan_in / 2 - 1) < 0.15, path
        assert np.abs(kernel_he).max() > 2 * bound  # untruncated normal, wider than torch's
    np.testing.assert_array_equal(he_init["fc8"]["kernel"].shape, torch_init["fc8"]["kernel"].shape)
    xavier = np.sqrt(6 / (torch_init["fc8"]["kernel"].shape[2] + 21))
    assert np.abs(np.asarray(he_init["fc8"]["kernel"])).max() <= xavier
    with pytest.raises(ValueError, match="conv_init must be one of"):
        models.build("seam", 20, conv_init="xavier")
