"""Tests of hfpl_jax.losses against float64 NumPy written from the reference's definitions
(``train_cam_voc.py``, ``tool/probutils.py``; the multinomial ISL of the predecessor, arXiv
2203.12459) and against the official code's outputs (tests/testdata/golden_losses.npz, made by
scripts/make_golden_losses.py)."""

import math
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfpl_jax import losses

GOLDEN = os.path.join(os.path.dirname(__file__), "testdata", "golden_losses.npz")


def nhwc(a):
    return np.transpose(a, (0, 2, 3, 1))


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


@pytest.fixture
def rng(request):
    """A generator seeded by the test's name: inputs do not depend on test order or workers."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


# ---------------------------------------------------------------------------------------------
# float64 NumPy references, from the reference's definitions
# ---------------------------------------------------------------------------------------------


def np_bce(x, y):
    x = x.astype(np.float64)
    return y * np.logaddexp(0.0, -x) + (1.0 - y) * np.logaddexp(0.0, x)


def np_mlsm(x, y):
    return float(np.mean(np_bce(x, np.broadcast_to(y, x.shape))))


def np_fsl_weights(image, mu, sigma, px, radius=None):
    """W[n] = G * sx (HW x HW) per image, as ``tool/probutils.feature_similarity_loss``."""
    n, h, w, cx = image.shape
    hw = h * w
    x = np.clip(image.reshape(n, hw, cx).astype(np.float64), 0.0, 1.0)
    rows, cols = np.divmod(np.arange(hw), w)
    dr = rows[:, None] - rows[None, :]
    dc = cols[:, None] - cols[None, :]
    if sigma is None:
        g = np.full((hw, hw), 1.0 / hw)
    else:
        g = np.exp(-0.5 * (np.sqrt(dr**2 + dc**2) / sigma) ** 2) / (2 * np.pi * sigma**2)
    if radius is not None:
        g = g * ((np.abs(dr) <= radius) & (np.abs(dc) <= radius))
    out = []
    for i in range(n):
        diff = np.abs(x[i][:, None, :] - x[i][None, :, :])
        if math.isinf(px):
            dx = diff.max(-1)
        else:
            dx = (diff**px).sum(-1) ** (1 / px) / cx ** (1 / px)
        dx = np.clip(dx, 0.0, 1.0)
        sx = np.tanh(mu + np.log((dx + 1e-5) / (1 - dx + 1e-5)))
        out.append(g * sx)
    return np.stack(out)


def np_fsl(image, pred, mu=2.5, sigma=5.0, px=1.0, py=2.0, radius=None):
    """Loss and its gradient w.r.t. pred (derived by hand from the pair sum)."""
    n, h, w, c = pred.shape
    hw = h * w
    wts = np_fsl_weights(image, mu, sigma, px, radius)
    y = pred.reshape(n, hw, c).astype(np.float64)
    total, grad = 0.0, np.zeros_like(y)
    for i in range(n):
        delta = y[i][:, None, :] - y[i][None, :, :]
        sy = 0.5 * (np.abs(delta) ** py).sum(-1)
        total += np.sum(wts[i] * sy)
        # d/dy_k: both orders (k, j) and (j, k) of each pair, W symmetric.
        dterm = py * np.abs(delta) ** (py - 1) * np.sign(delta)
        grad[i] = np.einsum("ij,ijc->ic", wts[i], dterm)
    return -total / (n * hw), (-grad / (n * hw)).reshape(pred.shape)


def np_max_onehot_with_background(x):
    t = x.astype(np.float64).copy()
    t[..., 0] = 1.0 - t[..., 1:].max(-1)
    fg = t[..., 1:]
    t[..., 1:] = np.where(fg == fg.max(-1, keepdims=True), fg, 0.0)
    return t


def np_ecr(cam_rv, cam_other, frac=0.2):
    n, h, w, c = cam_rv.shape
    k = int(c * h * w * frac)
    diff = (cam_rv.astype(np.float64) - np_max_onehot_with_background(cam_other)).reshape(n, -1)
    order = np.argsort(-np.abs(diff), axis=1)[:, :k]
    loss = np.take_along_axis(np.abs(diff), order, 1).sum() / (n * k)
    grad = np.zeros_like(diff)
    np.put_along_axis(grad, order, np.take_along_axis(np.sign(diff), order, 1) / (n * k), 1)
    return loss, grad.reshape(cam_rv.shape)


def np_min_pool(x):
    n, h, w, c = x.shape
    k = h * w // 4
    xf = x.astype(np.float64).reshape(n, h * w, c)
    m = xf.max(-1)
    order = np.argsort(m, axis=1)[:, :k]
    vals = np.take_along_axis(m, order, 1)
    loss = np.maximum(vals, 0).sum() / (k * n)
    grad = np.zeros_like(xf)
    arg = xf.argmax(-1)
    for b in range(n):
        for p, v in zip(order[b], vals[b], strict=True):
            if v > 0:
                grad[b, p, arg[b, p]] = 1.0 / (k * n)
    return loss, grad.reshape(x.shape)


def np_sampling(logits, posterior):
    """(q, scores): q[n, i, c] normalised pixel distribution, scores[n, i, c] scored values."""
    z = logits.astype(np.float64)
    n, h, w, c = z.shape
    z = z.reshape(n, h * w, c)
    if posterior == "binomial":
        weights, scores = 1.0 / (1.0 + np.exp(-z)) + 1e-5, z
    else:
        e = np.exp(z - z.max(-1, keepdims=True))
        p = (e / e.sum(-1, keepdims=True))[..., 1:]
        eps = 1e-3
        weights, scores = p, np.log(p * (1 - eps) + eps) - np.log(1 - p * (1 - eps))
    return weights / weights.sum(1, keepdims=True), scores


# ---------------------------------------------------------------------------------------------
# Multi-label soft margin loss
# ---------------------------------------------------------------------------------------------


def test_mlsm_matches_numpy_with_broadcast_labels_and_gradient(rng):
    x = rng.normal(0, 3, size=(4, 5, 7)).astype(np.float32)
    y = (rng.uniform(size=(4, 1, 7)) < 0.5).astype(np.float32)
    got = losses.multilabel_soft_margin_loss(x, y)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(got, np_mlsm(x, y), rtol=1e-6)
    grad = jax.grad(losses.multilabel_soft_margin_loss)(x, y)
    want = (1 / (1 + np.exp(-x.astype(np.float64))) - y) / x.size
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(jax.jit(losses.multilabel_soft_margin_loss)(x, y), got, rtol=1e-6)


def test_mlsm_bf16_and_golden(rng, golden):
    x = rng.normal(0, 3, size=(3, 11)).astype(np.float32)
    y = (rng.uniform(size=(3, 11)) < 0.5).astype(np.float32)
    xb = jnp.asarray(x, jnp.bfloat16)
    got = losses.multilabel_soft_margin_loss(xb, y)
    assert got.dtype == jnp.float32
    # Computed in float32 from the bf16 values: only their rounding differs from the f32 input.
    np.testing.assert_allclose(got, np_mlsm(np.asarray(xb.astype(jnp.float32)), y), rtol=1e-6)
    np.testing.assert_allclose(got, np_mlsm(x, y), rtol=2e-2)
    # Golden: F.multilabel_soft_margin_loss on (N, C, 1, 1), as the GAP term.
    gx, gy = nhwc(golden["mlsm/logits"]), nhwc(golden["mlsm/labels"])
    loss, grad = jax.value_and_grad(losses.multilabel_soft_margin_loss)(gx, gy)
    np.testing.assert_allclose(loss, golden["mlsm/loss"], rtol=1e-6)
    np.testing.assert_allclose(grad, nhwc(golden["mlsm/grad_logits"]), rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Importance-sampling loss
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("posterior", ["binomial", "multinomial"])
def test_isl_from_indices_matches_numpy_with_gradient(rng, posterior):
    c = 4
    logits = rng.normal(0, 2, size=(2, 5, 3, c + (posterior == "multinomial"))).astype(np.float32)
    labels = np.array([[1, 0, 0, 1], [0, 1, 0, 0]], np.float32)
    idx = rng.integers(0, 15, size=(2, 6, c)).astype(np.int32)
    _, scores = np_sampling(logits, posterior)
    sampled = np.take_along_axis(scores, idx, axis=1)
    want = np_mlsm(sampled, labels[:, None, :])
    fn = lambda z: losses.importance_sampling_loss_from_indices(z, labels, idx, posterior=posterior)  # noqa: E731
    got, grad = jax.value_and_grad(fn)(logits)
    np.testing.assert_allclose(got, want, rtol=1e-6)

    def np_loss(z):
        return np_mlsm(
            np.take_along_axis(np_sampling(z, posterior)[1], idx, axis=1), labels[:, None]
        )

    # Central differences of the float64 reference (smooth: indices are fixed).
    step, g_num = 1e-6, np.zeros(logits.shape)
    z64 = logits.astype(np.float64)
    for i in np.ndindex(logits.shape):
        zp, zm = z64.copy(), z64.copy()
        zp[i] += step
        zm[i] -= step
        g_num[i] = (np_loss(zp) - np_loss(zm)) / (2 * step)
    np.testing.assert_allclose(grad, g_num, rtol=1e-4, atol=1e-7)


def test_isl_golden_replays_torch_multinomial_draws(golden):
    logits = nhwc(golden["isl/logits"])  # (N, H, W, 1 + C); channel 0 is background
    labels = golden["isl/labels"]
    idx = np.transpose(golden["isl/indices"], (0, 2, 1))  # (N, C, S) -> (N, S, C)
    fn = lambda z: losses.importance_sampling_loss_from_indices(z[..., 1:], labels, idx)  # noqa: E731
    loss, grad = jax.value_and_grad(fn)(logits)
    np.testing.assert_allclose(loss, golden["isl/loss"], rtol=1e-6)
    want = nhwc(golden["isl/grad_logits"])
    np.testing.assert_array_equal(want[..., 0], 0.0)  # indices carry no gradient into q
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    samples = jax.vmap(lambda z, i: jnp.take_along_axis(z, i, 0))(
        logits[..., 1:].reshape(logits.shape[0], -1, labels.shape[1]), idx
    )
    np.testing.assert_array_equal(samples, np.transpose(golden["isl/samples"], (0, 2, 1)))


@pytest.mark.parametrize("posterior", ["binomial", "multinomial"])
def test_isl_mean_over_keys_matches_analytic_expectation(rng, posterior):
    c = 3
    logits = rng.normal(0, 1.5, size=(2, 6, 5, c + (posterior == "multinomial"))).astype(np.float32)
    labels = np.array([[1, 0, 1], [0, 0, 1]], np.float32)
    q, scores = np_sampling(logits, posterior)
    expected = float(np.mean(np.sum(q * np_bce(scores, labels[:, None, :]), axis=1)))
    np.testing.assert_allclose(
        losses.expected_importance_sampling_loss(logits, labels, posterior=posterior),
        expected,
        rtol=1e-5,
    )
    keys = jax.random.split(jax.random.key(11), 4000)
    draws = jax.jit(
        jax.vmap(lambda k: losses.importance_sampling_loss(k, logits, labels, posterior=posterior))
    )(keys)
    draws = np.asarray(draws, np.float64)
    stderr = draws.std() / math.sqrt(draws.size)
    assert abs(draws.mean() - expected) < 4 * stderr, (draws.mean(), expected, stderr)


# ---------------------------------------------------------------------------------------------
# Feature similarity loss
# ---------------------------------------------------------------------------------------------

FSL_CONFIGS = {
    "reference": dict(),
    "px2": dict(px=2.0),
    "py1.5": dict(py=1.5),
    "uniform": dict(sigma=None),
    "neg_mu_px3_py3": dict(mu=-1.0, px=3.0, py=3.0),
    "pxinf": dict(px=float("inf"), mu=0.5),
}


@pytest.fixture(scope="module")
def fsl_inputs():
    r = np.random.default_rng(99)
    image = r.uniform(-0.15, 1.15, size=(2, 13, 11, 3)).astype(np.float32)  # clamped inside
    pred = r.normal(0, 1, size=(2, 13, 11, 5)).astype(np.float32)
    return image, pred


@pytest.mark.parametrize("config", list(FSL_CONFIGS))
@pytest.mark.parametrize("method", ["dense", "exact", "windowed"])
def test_fsl_matches_numpy_value_and_gradient(fsl_inputs, method, config):
    image, pred = fsl_inputs
    kw = FSL_CONFIGS[config]
    want, want_grad = np_fsl(image, pred, **kw)
    extra = {"window_radius": 12} if method == "windowed" else {}  # >= max(H, W) - 1: all pairs
    if method == "exact":
        extra = {"block_size": 40}  # 143 pixels: 4 blocks, the last one padded
    fn = lambda y: losses.feature_similarity_loss(image, y, method=method, **kw, **extra)  # noqa: E731
    got, grad = jax.value_and_grad(fn)(pred)
    assert got.dtype == jnp.float32
    assert rel_err(got, want) < 2e-6
    assert rel_err(grad, want_grad) < 5e-6


def test_fsl_exact_equals_dense(rng):
    image = rng.uniform(0, 1, size=(2, 23, 19, 3)).astype(np.float32)
    pred = rng.uniform(0, 1, size=(2, 23, 19, 6)).astype(np.float32)
    vg = {
        m: jax.jit(
            jax.value_and_grad(lambda y, m=m: losses.feature_similarity_loss(image, y, method=m))
        )(pred)
        for m in ("dense", "exact")
    }
    assert rel_err(vg["exact"][0], vg["dense"][0]) < 1e-6
    assert rel_err(vg["exact"][1], vg["dense"][1]) < 1e-5
    want, want_grad = np_fsl(image, pred)
    assert rel_err(vg["exact"][0], want) < 1e-6
    assert rel_err(vg["exact"][1], want_grad) < 2e-6


def test_fsl_exact_equals_dense_in_float64(rng):
    """The rearrangement is an identity: under x64 both agree to float64 rounding."""
    image = rng.uniform(0, 1, size=(1, 9, 14, 3))
    pred = rng.normal(size=(1, 9, 14, 4))
    with jax.enable_x64(True):
        x, y = jnp.asarray(image, jnp.float64), jnp.asarray(pred, jnp.float64)
        dense = losses.feature_similarity_loss(x, y, method="dense")
        exact = losses.feature_similarity_loss(x, y, method="exact", block_size=24)
        assert exact.dtype == jnp.float64
        assert rel_err(exact, dense) < 1e-12
        assert rel_err(exact, np_fsl(image, pred)[0]) < 1e-12


@pytest.mark.parametrize("radius", [1, 3, 6])
def test_fsl_windowed_error_within_stated_bound(rng, radius):
    image = rng.uniform(0, 1, size=(2, 23, 19, 3)).astype(np.float32)
    pred = rng.uniform(0, 1, size=(2, 23, 19, 4)).astype(np.float32)
    got = float(
        losses.feature_similarity_loss(image, pred, method="windowed", window_radius=radius)
    )
    full, _ = np_fsl(image, pred)
    truncated, _ = np_fsl(image, pred, radius=radius)
    assert rel_err(got, truncated) < 2e-6  # it computes exactly the windowed sum
    bound = float(losses.feature_similarity_window_error_bound(pred, window_radius=radius))
    error = abs(got - full)
    assert 0 < error <= bound, (error, bound)


def test_fsl_window_bound_is_small_at_the_default_radius():
    # sigma = 5, R = ceil(4 sigma) = 20 at the reference's 56 x 56: tail mass per pixel < 1e-4,
    # so |windowed - exact| <= 1e-4 * mean_n 0.5 * sum_c (max - min)^2.
    pred = np.zeros((1, 56, 56, 2), np.float32)
    pred[0, 0, 0, 0] = 1.0  # Delta = 1
    bound = float(losses.feature_similarity_window_error_bound(pred))
    assert 0 < bound < 0.5e-4


def test_fsl_jit_equals_eager_and_vmap(rng):
    image = rng.uniform(0, 1, size=(3, 2, 9, 7, 3)).astype(np.float32)
    pred = rng.normal(size=(3, 2, 9, 7, 4)).astype(np.float32)
    for method, kw in (("exact", {}), ("windowed", {"window_radius": 3})):

        def fn(x, y, method=method, kw=kw):
            return losses.feature_similarity_loss(x, y, method=method, **kw)

        value_and_grad = jax.value_and_grad(fn, argnums=1)
        eager = value_and_grad(image[0], pred[0])
        jitted = jax.jit(value_and_grad)
        assert rel_err(jitted(image[0], pred[0])[0], eager[0]) < 1e-6
        assert rel_err(jitted(image[0], pred[0])[1], eager[1]) < 1e-6
        vals, grads = jax.jit(jax.vmap(value_and_grad))(image, pred)
        for b in range(3):
            want, want_grad = np_fsl(image[b], pred[b], **kw and {"radius": kw["window_radius"]})
            assert rel_err(vals[b], want) < 2e-6
            assert rel_err(grads[b], want_grad) < 5e-6


def test_fsl_bf16_inputs(rng):
    image = rng.uniform(0, 1, size=(2, 12, 10, 3)).astype(np.float32)
    pred = rng.uniform(0, 1, size=(2, 12, 10, 5)).astype(np.float32)
    ib, pb = jnp.asarray(image, jnp.bfloat16), jnp.asarray(pred, jnp.bfloat16)
    for method in ("exact", "windowed", "dense"):
        val, grad = jax.jit(
            jax.value_and_grad(lambda y, m=method: losses.feature_similarity_loss(ib, y, method=m))
        )(pb)
        assert val.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
        # Arithmetic is float32: the same as float32 inputs holding the bf16 values...
        rounded = np_fsl(np.asarray(ib, np.float32), np.asarray(pb, np.float32))
        assert rel_err(val, rounded[0]) < 2e-6
        assert rel_err(np.asarray(grad, np.float32), rounded[1]) < 2**-8
        # ...and within the bf16 input rounding (2^-9 relative per value) of the float32 loss.
        assert rel_err(val, np_fsl(image, pred)[0]) < 2e-2


@pytest.mark.parametrize("case", ["fsl_odd", "fsl_general", "fsl_voc56"])
def test_fsl_golden_matches_reference(golden, case):
    image, pred = nhwc(golden[f"{case}/image"]), nhwc(golden[f"{case}/pred"])
    mu, sigma, px, py = golden[f"{case}/params"]
    kw = dict(mu=float(mu), sigma=None if np.isnan(sigma) else float(sigma), px=px, py=py)
    want64, grad64 = float(golden[f"{case}/loss64"]), nhwc(golden[f"{case}/grad_pred64"])
    want32, grad32 = float(golden[f"{case}/loss"]), nhwc(golden[f"{case}/grad_pred"])
    methods = ["exact"] if case == "fsl_voc56" else ["exact", "dense", "windowed"]
    for method in methods:
        extra = {"window_radius": max(pred.shape[1:3])} if method == "windowed" else {}

        def fn(y, m=method, e=extra):
            return losses.feature_similarity_loss(image, y, method=m, **kw, **e)

        val, grad = jax.jit(jax.value_and_grad(fn))(pred)
        for want, want_grad in ((want64, grad64), (want32, grad32)):
            assert rel_err(val, want) < 1e-5, (method, float(val), want)
            assert rel_err(grad, want_grad) < 1e-5, method


# ---------------------------------------------------------------------------------------------
# SEAM losses
# ---------------------------------------------------------------------------------------------


def test_er_matches_numpy(rng):
    a = rng.uniform(size=(2, 7, 5, 6)).astype(np.float32)
    b = rng.uniform(size=(2, 7, 5, 6)).astype(np.float32)
    got, (ga, gb) = jax.value_and_grad(losses.equivariant_regularization_loss, (0, 1))(a, b)
    diff = a.astype(np.float64)[..., 1:] - b[..., 1:]
    np.testing.assert_allclose(got, np.abs(diff).mean(), rtol=1e-6)
    np.testing.assert_array_equal(ga[..., 0], 0.0)
    np.testing.assert_allclose(ga[..., 1:], np.sign(diff) / diff.size, rtol=1e-6)
    np.testing.assert_allclose(gb, -ga, rtol=1e-6)


def test_ecr_matches_numpy_and_k_is_the_references(rng):
    # VOC: train_cam_voc.py's (int)(21*hs*ws*0.2) at hs = ws = 134.
    assert losses._ecr_top_k(21, 134, 134, 0.2) == 75415
    assert losses._ecr_top_k(81, 134, 134, 0.2) == 290887  # COCO
    cam_rv = rng.uniform(size=(2, 9, 7, 5)).astype(np.float32)
    cam_other = rng.uniform(size=(2, 9, 7, 5)).astype(np.float32)
    fn = losses.equivariant_cross_regularization_loss
    got, (g_rv, g_other) = jax.value_and_grad(fn, (0, 1))(cam_rv, cam_other)
    want, want_grad = np_ecr(cam_rv, cam_other)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(g_rv, want_grad, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(g_other, 0.0)  # targets are stop-gradient
    got_frac = fn(cam_rv, cam_other, top_fraction=0.37)
    np.testing.assert_allclose(got_frac, np_ecr(cam_rv, cam_other, 0.37)[0], rtol=1e-6)
    np.testing.assert_allclose(jax.jit(fn)(cam_rv, cam_other), got, rtol=1e-6)
    got_bf16 = fn(jnp.asarray(cam_rv, jnp.bfloat16), jnp.asarray(cam_other, jnp.bfloat16))
    assert got_bf16.dtype == jnp.float32
    np.testing.assert_allclose(got_bf16, want, rtol=1e-2)


def test_min_pool_matches_numpy(rng):
    x = rng.normal(size=(3, 9, 7, 4)).astype(np.float32)
    got, grad = jax.value_and_grad(losses.adaptive_min_pooling_loss)(x)
    want, want_grad = np_min_pool(x)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-9)
    vm = jax.vmap(losses.adaptive_min_pooling_loss)(x[:, None])
    np.testing.assert_allclose(vm, [np_min_pool(x[i : i + 1])[0] for i in range(3)], rtol=1e-6)


# Every per-image loss under the transformations users apply: jit, vmap over an extra leading
# axis, and bfloat16 inputs. Each case: (inputs from rng, float64 NumPy reference on those inputs).
TRANSFORM_CASES = {
    "mlsm": (
        lambda r: (r.normal(size=(3, 2, 7)).astype(np.float32),
                   (r.uniform(size=(3, 2, 7)) < 0.4).astype(np.float32)),
        losses.multilabel_soft_margin_loss,
        np_mlsm,
    ),
    "er": (
        lambda r: (r.uniform(size=(3, 1, 5, 7, 4)).astype(np.float32),
                   r.uniform(size=(3, 1, 5, 7, 4)).astype(np.float32)),
        losses.equivariant_regularization_loss,
        lambda a, b: float(np.abs(a[..., 1:].astype(np.float64) - b[..., 1:]).mean()),
    ),
    "ecr": (
        lambda r: (r.uniform(size=(3, 1, 6, 5, 4)).astype(np.float32),
                   r.uniform(size=(3, 1, 6, 5, 4)).astype(np.float32)),
        losses.equivariant_cross_regularization_loss,
        lambda a, b: np_ecr(a, b)[0],
    ),
    "min_pool": (
        lambda r: (r.normal(size=(3, 1, 7, 5, 4)).astype(np.float32),),
        losses.adaptive_min_pooling_loss,
        lambda x: np_min_pool(x)[0],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(TRANSFORM_CASES))
def test_losses_under_jit_vmap_and_bf16(rng, name):
    make_inputs, fn, np_fn = TRANSFORM_CASES[name]
    stacked = make_inputs(rng)  # a leading vmap axis of 3 over valid inputs
    want = [np_fn(*(a[i] for a in stacked)) for i in range(3)]
    eager = [float(fn(*(a[i] for a in stacked))) for i in range(3)]
    np.testing.assert_allclose(eager, want, rtol=1e-6)
    jitted = jax.jit(fn)
    np.testing.assert_allclose([jitted(*(a[i] for a in stacked)) for i in range(3)], eager,
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(jax.vmap(fn)(*stacked), eager, rtol=1e-6)
    # bfloat16 inputs: arithmetic in float32 and a float32 result, so the only error is the input
    # rounding (checked exactly against the reference on the rounded inputs) ...
    rounded = [np.asarray(jnp.asarray(a[0], jnp.bfloat16).astype(jnp.float32)) for a in stacked]
    got = fn(*(jnp.asarray(a, jnp.bfloat16) for a in rounded))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_fn(*rounded), rtol=1e-6)
    # ... which moves the loss by at most about 2^-8 relative.
    np.testing.assert_allclose(got, want[0], rtol=2**-7)


def test_seam_losses_golden_match_reference(golden):
    label = golden["seam/label"][:, None, None, :]
    cams = {k: nhwc(golden[f"seam/{k}"]) for k in ("cam1", "cam2", "cam_rv1", "cam_rv2")}

    def total(cam1, cam2, cam_rv1, cam_rv2):
        m1, m2, r1, r2 = cam1 * label, cam2 * label, cam_rv1 * label, cam_rv2 * label
        er = losses.equivariant_regularization_loss(m1, m2)
        ecr1 = losses.equivariant_cross_regularization_loss(r1, m2)
        ecr2 = losses.equivariant_cross_regularization_loss(r2, m1)
        return er + ecr1 + 2.0 * ecr2, (er, ecr1, ecr2)

    (_, (er, ecr1, ecr2)), grads = jax.value_and_grad(total, argnums=(0, 1, 2, 3), has_aux=True)(
        *cams.values()
    )
    np.testing.assert_allclose(er, golden["seam/loss_er"], rtol=1e-6)
    np.testing.assert_allclose(ecr1, golden["seam/loss_ecr1"], rtol=1e-6)
    np.testing.assert_allclose(ecr2, golden["seam/loss_ecr2"], rtol=1e-6)
    for name, g in zip(cams, grads, strict=True):
        want = nhwc(golden[f"seam/grad_{name}"])
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=name)
    from hfpl_jax.pooling import max_onehot, with_background

    target2 = max_onehot(with_background(cams["cam2"] * label))
    np.testing.assert_allclose(target2, nhwc(golden["seam/target2"]), atol=1e-7)


def test_min_pool_golden_matches_reference(golden):
    x, label = nhwc(golden["minpool/x"]), golden["minpool/label"][:, None, None, :]
    fn = lambda a: losses.adaptive_min_pooling_loss((a * label)[..., 1:])  # noqa: E731
    loss, grad = jax.value_and_grad(fn)(x)
    np.testing.assert_allclose(loss, golden["minpool/loss"], rtol=1e-6)
    want = nhwc(golden["minpool/grad_x"])
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Input errors
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors_naming_the_argument():
    img = np.zeros((2, 5, 4, 3), np.float32)
    with pytest.raises(ValueError, match=r"pred: expected \(N, H, W\) = \(2, 5, 4\)"):
        losses.feature_similarity_loss(img, np.zeros((2, 5, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"image: expected a 4-d array \(N, H, W, 3\)"):
        losses.feature_similarity_loss(img[0], img)
    with pytest.raises(ValueError, match="method: expected one of"):
        losses.feature_similarity_loss(img, img, method="fast")
    with pytest.raises(ValueError, match="sigma: expected a positive number"):
        losses.feature_similarity_loss(img, img, sigma=0.0)
    with pytest.raises(ValueError, match="pred: expected a floating-point array"):
        losses.feature_similarity_loss(img, img.astype(np.int32))
    with pytest.raises(ValueError, match="window_radius: required"):
        losses.feature_similarity_loss(img, img, method="windowed", sigma=None)
    with pytest.raises(ValueError, match="mu: expected a Python number"):
        jax.jit(lambda m: losses.feature_similarity_loss(img, img, mu=m))(1.0)
    with pytest.raises(ValueError, match=r"labels: expected a shape broadcastable to logits"):
        losses.multilabel_soft_margin_loss(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"labels: expected shape \(2, 3\)"):
        losses.importance_sampling_loss(jax.random.key(0), img, np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"labels: expected shape \(2, 2\).*multinomial"):
        losses.importance_sampling_loss(
            jax.random.key(0), img, np.zeros((2, 3)), posterior="multinomial"
        )
    with pytest.raises(ValueError, match=r"cam_b: expected shape \(2, 5, 4, 3\)"):
        losses.equivariant_regularization_loss(img, img[:1])
    with pytest.raises(ValueError, match="top_fraction: k = int"):
        losses.equivariant_cross_regularization_loss(img, img, top_fraction=1e-4)
    with pytest.raises(ValueError, match=r"x: expected H \* W >= 4"):
        losses.adaptive_min_pooling_loss(np.zeros((1, 1, 3, 2), np.float32))


@pytest.mark.parametrize("method", ["exact", "windowed"])
def test_fsl_batch_sharded_over_devices_stays_sharded(rng, method):
    """Images are a batch axis inside the blocked loops: a data-sharded batch is not gathered."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    num = jax.device_count()
    mesh = jax.make_mesh((num,), ("data",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    image = rng.uniform(0, 1, size=(num, 10, 9, 3)).astype(np.float32)
    pred = rng.uniform(0, 1, size=(num, 10, 9, 3)).astype(np.float32)

    def fn(x, y):
        return losses.feature_similarity_loss(x, y, method=method, window_radius=4)

    step = jax.jit(jax.value_and_grad(fn, argnums=1))
    args = jax.device_put(image, sharding), jax.device_put(pred, sharding)
    assert "all-gather" not in step.lower(*args).compile().as_text()
    val, grad = step(*args)
    assert grad.sharding.spec == PartitionSpec("data")
    want, want_grad = np_fsl(image, pred, radius=4 if method == "windowed" else None)
    assert rel_err(val, want) < 2e-6 and rel_err(grad, want_grad) < 5e-6
