"""Tests of hfpl_jax.pooling against float64 NumPy written from the reference's definitions
(``tool/visualization.max_norm``, ``max_onehot`` of ``train_cam_voc.py``,
``tool/probutils.sample_probs``; the multinomial posterior of the predecessor, arXiv 2203.12459)
and against the official code's outputs (tests/testdata/golden_losses.npz, made by
scripts/make_golden_losses.py)."""

import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from hfpl_jax import pooling

GOLDEN = os.path.join(os.path.dirname(__file__), "testdata", "golden_losses.npz")


# ---------------------------------------------------------------------------------------------
# float64 NumPy references, from the reference's definitions
# ---------------------------------------------------------------------------------------------


def np_gap(x):
    return x.astype(np.float64).mean(axis=(1, 2))


def np_max_norm(x, eps=1e-5):
    p = np.maximum(x.astype(np.float64), 0.0)
    hi = p.max(axis=(1, 2), keepdims=True)
    lo = p.min(axis=(1, 2), keepdims=True)
    return np.maximum(p - lo - eps, 0.0) / (hi - lo + eps)


def np_max_onehot(x):
    out = x.astype(np.float64).copy()
    fg = out[..., 1:]
    out[..., 1:] = np.where(fg == fg.max(axis=-1, keepdims=True), fg, 0.0)
    return out


def np_with_background(x):
    out = x.astype(np.float64).copy()
    out[..., 0] = 1.0 - out[..., 1:].max(axis=-1)
    return out


def np_sampling_distribution(logits, posterior):
    """q[n, i, c]: normalised probability of drawing pixel i for (image n, class c)."""
    z = logits.astype(np.float64)
    n, h, w, c = z.shape
    z = z.reshape(n, h * w, c)
    if posterior == "binomial":
        weights = 1.0 / (1.0 + np.exp(-z)) + 1e-5
    else:
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        weights = (e / e.sum(axis=-1, keepdims=True))[..., 1:]
    return weights / weights.sum(axis=1, keepdims=True)


def np_scores(logits, posterior):
    z = logits.astype(np.float64)
    if posterior == "binomial":
        return z
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    p = (e / e.sum(axis=-1, keepdims=True))[..., 1:]
    eps = 1e-3
    return np.log(p * (1 - eps) + eps) - np.log(1 - p * (1 - eps))


def numerical_grad(f, x, step=1e-6):
    """Central differences of a float64 scalar function."""
    x = x.astype(np.float64)
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + step
        up = f(x)
        flat[i] = old - step
        down = f(x)
        flat[i] = old
        gflat[i] = (up - down) / (2 * step)
    return g


@pytest.fixture
def rng(request):
    """A generator seeded by the test's name: inputs do not depend on test order or workers."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


# ---------------------------------------------------------------------------------------------
# GAP, max_norm, max_onehot, with_background
# ---------------------------------------------------------------------------------------------


def test_global_average_pool_matches_numpy(rng):
    x = rng.normal(size=(3, 7, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(pooling.global_average_pool(x), np_gap(x), rtol=1e-6, atol=1e-7)
    assert pooling.global_average_pool(x).shape == (3, 4)


def test_global_average_pool_bf16_keeps_dtype_and_accumulates_in_float32(rng):
    x = rng.uniform(0, 1, size=(2, 33, 31, 3)).astype(np.float32)
    xb = jnp.asarray(x, jnp.bfloat16)
    out = pooling.global_average_pool(xb)
    assert out.dtype == jnp.bfloat16
    # Float32 accumulation: only the final rounding to bf16 (rel 2^-8) remains.
    ref = np_gap(np.asarray(xb.astype(jnp.float32)))
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, rtol=2**-8)


def test_max_norm_matches_numpy_and_jit_equals_eager(rng):
    x = rng.normal(size=(2, 9, 7, 5)).astype(np.float32)
    eager = pooling.max_norm(x)
    np.testing.assert_allclose(eager, np_max_norm(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jit(pooling.max_norm)(x), eager, rtol=1e-6, atol=1e-7)


def test_max_norm_gradient_matches_finite_differences(rng):
    # Tie-free continuous inputs; min and max carry gradient (max_norm does not detach them).
    x = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    weights = rng.normal(size=x.shape)
    got = jax.grad(lambda a: jnp.sum(pooling.max_norm(a) * weights))(x)
    want = numerical_grad(lambda a: np.sum(np_max_norm(a) * weights), x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # Detaching min/max would change these gradients: check the min/max path is present.
    at_max = np.maximum(x, 0) == np.maximum(x, 0).max(axis=(1, 2), keepdims=True)
    assert np.all(np.abs(np.asarray(got)[at_max]) > 0)


def test_max_norm_vmap_and_bf16(rng):
    x = rng.normal(size=(3, 2, 6, 5, 4)).astype(np.float32)
    batched = jax.vmap(pooling.max_norm)(x)
    for b in range(3):
        np.testing.assert_allclose(batched[b], np_max_norm(x[b]), rtol=1e-6, atol=1e-6)
    xb = jnp.asarray(x[0], jnp.bfloat16)
    out = pooling.max_norm(xb)
    assert out.dtype == jnp.bfloat16
    ref = np_max_norm(np.asarray(xb.astype(jnp.float32)))
    # Output in [0, 1], rounded once to bf16: absolute error <= 2^-9.
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, atol=2**-9)


def test_max_norm_golden_matches_reference():
    g = np.load(GOLDEN)
    x = np.transpose(g["max_norm/x"], (0, 2, 3, 1))
    weights = np.transpose(g["max_norm/weights"], (0, 2, 3, 1))
    out, vjp = jax.vjp(pooling.max_norm, jnp.asarray(x))
    np.testing.assert_allclose(out, np.transpose(g["max_norm/out"], (0, 2, 3, 1)), atol=1e-6)
    (grad,) = vjp(jnp.asarray(weights))
    want = np.transpose(g["max_norm/grad_x"], (0, 2, 3, 1))
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_max_onehot_and_with_background(rng):
    x = rng.uniform(size=(2, 5, 3, 6)).astype(np.float32)
    x[0, 0, 0, 2] = x[0, 0, 0, 4] = 2.0  # a tie: both maxima are kept (reference: != max -> 0)
    np.testing.assert_array_equal(pooling.max_onehot(x), np_max_onehot(x).astype(np.float32))
    np.testing.assert_allclose(pooling.with_background(x), np_with_background(x), rtol=1e-6)
    assert pooling.max_onehot(x)[0, 0, 0, 2] == 2.0 and pooling.max_onehot(x)[0, 0, 0, 4] == 2.0
    # The new background's gradient goes to the foreground maximum only.
    grad = jax.grad(lambda a: jnp.sum(pooling.with_background(a)[..., 0]))(x[1:])
    fg = x[1:, ..., 1:]
    np.testing.assert_array_equal(grad[..., 0], 0.0)
    np.testing.assert_array_equal(grad[..., 1:], -(fg == fg.max(-1, keepdims=True)).astype(float))


@pytest.mark.parametrize(
    "fn, np_fn",
    [
        (pooling.global_average_pool, np_gap),
        (pooling.max_onehot, np_max_onehot),
        (pooling.with_background, np_with_background),
    ],
    ids=["global_average_pool", "max_onehot", "with_background"],
)
def test_pooling_under_jit_vmap_and_bf16(rng, fn, np_fn):
    x = rng.uniform(size=(3, 2, 7, 5, 4)).astype(np.float32)  # a leading vmap axis of 3
    eager = fn(x[0])
    np.testing.assert_allclose(eager, np_fn(x[0]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jax.jit(fn)(x[0]), eager, rtol=1e-6, atol=1e-7)
    batched = jax.vmap(fn)(x)
    for b in range(3):
        np.testing.assert_allclose(batched[b], np_fn(x[b]), rtol=1e-6, atol=1e-7)
    # bfloat16 keeps its dtype; values in [0, 1] computed from the rounded inputs and rounded once
    # more: absolute error <= 2^-9 against the reference on the rounded inputs.
    xb = jnp.asarray(x[0], jnp.bfloat16)
    out = fn(xb)
    assert out.dtype == jnp.bfloat16
    ref = np_fn(np.asarray(xb.astype(jnp.float32)))
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, atol=2**-9)


def test_global_average_pool_gradient_is_uniform(rng):
    x = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)
    weights = rng.normal(size=(2, 4))
    grad = jax.grad(lambda a: jnp.sum(pooling.global_average_pool(a) * weights))(x)
    want = np.broadcast_to(weights[:, None, None, :] / 15.0, x.shape)
    np.testing.assert_allclose(grad, want, rtol=1e-6)


def test_importance_sample_bf16_logits(rng):
    logits = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    lb = jnp.asarray(logits, jnp.bfloat16)
    key = jax.random.key(3)
    samples = pooling.importance_sample(key, lb, 6)
    indices = pooling.importance_sample_indices(key, lb, 6)
    assert samples.shape == (2, 6, 3) and samples.dtype == jnp.bfloat16
    # The samples are the (bf16) logits at the drawn pixels, bit for bit.
    flat = np.asarray(lb.astype(jnp.float32)).reshape(2, 20, 3)
    want = np.take_along_axis(flat, np.asarray(indices), axis=1)
    np.testing.assert_array_equal(np.asarray(samples.astype(jnp.float32)), want)


# ---------------------------------------------------------------------------------------------
# Importance sampling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("posterior", ["binomial", "multinomial"])
def test_sampled_pixels_follow_the_categorical(rng, posterior):
    """Chi-square goodness of fit of 20,000 draws per (image, class) to q (float64)."""
    c = 3 if posterior == "binomial" else 4  # multinomial: background + 3 classes
    logits = rng.normal(0, 1.0, size=(2, 5, 7, c)).astype(np.float32)
    num = 20_000
    idx = np.asarray(
        jax.jit(pooling.importance_sample_indices, static_argnums=2, static_argnames="posterior")(
            jax.random.key(0), logits, num, posterior=posterior
        )
    )
    assert idx.shape == (2, num, 3) and idx.dtype == np.int32
    q = np_sampling_distribution(logits, posterior)
    chi2, dof = 0.0, 0
    for n in range(2):
        for k in range(3):
            counts = np.bincount(idx[n, :, k], minlength=35)
            expected = num * q[n, :, k]
            assert expected.min() >= 5
            chi2 += np.sum((counts - expected) ** 2 / expected)
            dof += 34
    p_value = stats.chi2.sf(chi2, dof)
    assert p_value > 1e-3, (chi2, dof, p_value)
    # Per-class independence: the classes' draws are not copies of each other.
    assert not np.array_equal(idx[0, :, 0], idx[0, :, 1])


def test_importance_sample_is_gather_of_scores_and_routes_gradients(rng):
    logits = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    key = jax.random.key(3)
    samples = pooling.importance_sample(key, logits, 7)
    idx = pooling.importance_sample_indices(key, logits, 7)
    np.testing.assert_array_equal(samples, pooling.gather_pixels(logits, idx))
    want = np.take_along_axis(logits.reshape(2, 20, 3), np.asarray(idx), axis=1)
    np.testing.assert_array_equal(samples, want)
    # d sum(samples) / d logits = how often each pixel was drawn (no 1/q weight, no path via q).
    grad = np.asarray(jax.grad(lambda z: jnp.sum(pooling.importance_sample(key, z, 7)))(logits))
    counts = np.zeros((2, 20, 3))
    for n in range(2):
        for k in range(3):
            np.add.at(counts[n, :, k], np.asarray(idx)[n, :, k], 1.0)
    np.testing.assert_array_equal(grad.reshape(2, 20, 3), counts)


def test_multinomial_scores_match_numpy(rng):
    logits = rng.normal(0, 2, size=(2, 3, 5, 6)).astype(np.float32)
    got = pooling.importance_scores(logits, posterior="multinomial")
    assert got.shape == (2, 3, 5, 5)
    np.testing.assert_allclose(got, np_scores(logits, "multinomial"), rtol=1e-5, atol=1e-5)
    lw = pooling.importance_log_weights(logits, posterior="multinomial")
    q = jax.nn.softmax(lw, axis=1)
    np.testing.assert_allclose(q, np_sampling_distribution(logits, "multinomial"), rtol=1e-5)


def test_importance_sampling_under_vmap_and_jit(rng):
    logits = rng.normal(size=(4, 2, 3, 5, 2)).astype(np.float32)
    keys = jax.random.split(jax.random.key(5), 4)
    batched = jax.jit(jax.vmap(lambda k, z: pooling.importance_sample(k, z, 3)))(keys, logits)
    for b in range(4):
        np.testing.assert_array_equal(batched[b], pooling.importance_sample(keys[b], logits[b], 3))


# ---------------------------------------------------------------------------------------------
# Input errors
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors_naming_the_argument():
    with pytest.raises(ValueError, match=r"x: expected a 4-d array \(N, H, W, C\), got shape"):
        pooling.global_average_pool(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="x: expected a floating-point array"):
        pooling.max_norm(np.zeros((1, 2, 2, 2), np.int32))
    with pytest.raises(ValueError, match="x: expected .* C >= 2"):
        pooling.max_onehot(np.zeros((1, 2, 2, 1), np.float32))
    with pytest.raises(ValueError, match="posterior: expected one of"):
        pooling.importance_sample(jax.random.key(0), np.zeros((1, 2, 2, 2)), posterior="softmax")
    with pytest.raises(ValueError, match="logits: posterior='multinomial' expects"):
        pooling.importance_sample(
            jax.random.key(0), np.zeros((1, 2, 2, 1), np.float32), posterior="multinomial"
        )
    for bad in (0, -2, 2.0, True, "3"):
        with pytest.raises(ValueError, match="num_samples: expected a positive int"):
            pooling.importance_sample(jax.random.key(0), np.zeros((1, 2, 2, 2), np.float32), bad)
    # NumPy integers (e.g. from a config array) are ints.
    assert pooling.importance_sample(
        jax.random.key(0), np.zeros((1, 2, 2, 2), np.float32), np.int64(3)
    ).shape == (1, 3, 2)
    with pytest.raises(ValueError, match=r"indices: expected shape \(1, S, 2\)"):
        pooling.gather_pixels(np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 3, 3), np.int32))
    with pytest.raises(ValueError, match="indices: expected an integer array"):
        pooling.gather_pixels(np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 3, 2), np.float32))
