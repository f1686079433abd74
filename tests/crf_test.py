"""Dense CRF (hfpl_jax.inference.crf) against independent references.

* A float64 NumPy mean field with the exact all-pairs Gaussian kernels, written from the equations
  of ``tool/imutils.crf_inference`` / pydensecrf (unary -log(clip(P, 1e-5, 1)), Potts, symmetric
  normalisation, the pixel's own term included): ``method="exact"`` must match it to float32
  rounding, ``method="lattice"`` to the permutohedral approximation's error (bounded below).
* A pure-Python permutohedral lattice (a dict as the hash table, one point at a time, float32
  scalars) written from Adams et al. (2010) and the behaviour of pydensecrf's permutohedral.cpp:
  the JAX lattice (sort-based, static shapes) must build the same vertices and filter to float32
  rounding.
* pydensecrf itself (``pydensecrf2``), when installed.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfpl_jax.inference import crf, permutohedral
from hfpl_jax.inference.crf import dense_crf

DEFAULTS = dict(
    gaussian_sxy=3.0,
    gaussian_compat=3.0,
    bilateral_sxy=80.0,
    bilateral_srgb=13.0,
    bilateral_compat=10.0,
)


# ------------------------------------------------------------------------------------------------
# Inputs


def _scene(height: int, width: int, seed: int) -> np.ndarray:
    """A photograph-like uint8 RGB image: a smooth two-colour gradient, three discs of flat colour
    and mild noise, so the bilateral kernel sees real edges."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    top, bottom = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    image = top + (bottom - top) * (y / max(height - 1, 1))[..., None]
    for _ in range(3):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(0.2, 0.45) * min(height, width)
        inside = (y - cy) ** 2 + (x - cx) ** 2 < radius**2
        image[inside] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _cam_probs(height: int, width: int, num_labels: int, seed: int, alpha: float = 1.0):
    """(H, W, C) "probabilities" as the reference builds them: max-normalised CAM-like blobs for
    the foreground labels and bg = (1 - max fg)^alpha (not normalised)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cams = []
    for _ in range(num_labels - 1):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        sigma = rng.uniform(0.15, 0.4) * min(height, width)
        cam = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2)) + rng.uniform(
            0, 0.1, y.shape
        )
        cams.append(cam / cam.max())
    cams = np.stack(cams, -1).astype(np.float32)
    background = (1.0 - cams.max(-1, keepdims=True)) ** np.float32(alpha)
    return np.concatenate([background, cams], -1).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Float64 reference: the mean field with exact kernels


def _features64(image: np.ndarray, sxy: float, srgb: float | None) -> np.ndarray:
    height, width = image.shape[:2]
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    columns = [x.ravel() / sxy, y.ravel() / sxy]
    if srgb is not None:
        columns += [image[..., c].ravel().astype(np.float64) / srgb for c in range(3)]
    return np.stack(columns, -1)


def _softmax64(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_crf(image, probs, *, iterations=10, **params) -> np.ndarray:
    """Q after `iterations` steps of Q <- softmax(-U + sum_k w_k D_k K_k D_k Q), float64."""
    params = {**DEFAULTS, **params}
    height, width, num_labels = probs.shape
    unary = -np.log(np.clip(probs.astype(np.float64), 1e-5, 1.0)).reshape(-1, num_labels)
    terms = []
    for features, compat in (
        (_features64(image, params["gaussian_sxy"], None), params["gaussian_compat"]),
        (
            _features64(image, params["bilateral_sxy"], params["bilateral_srgb"]),
            params["bilateral_compat"],
        ),
    ):
        squared = ((features[:, None, :] - features[None, :, :]) ** 2).sum(-1)
        kernel = np.exp(-0.5 * squared)
        norm = 1.0 / np.sqrt(kernel.sum(1) + 1e-20)
        terms.append((kernel, norm[:, None], compat))
    q = _softmax64(-unary)
    for _ in range(iterations):
        logits = -unary
        for kernel, norm, compat in terms:
            logits = logits + compat * norm * (kernel @ (norm * q))
        q = _softmax64(logits)
    return q.reshape(height, width, num_labels)


# ------------------------------------------------------------------------------------------------
# Pure-Python permutohedral lattice (float32 scalars, one point at a time, a dict of vertices)


def reference_lattice_filter(features: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Splat / blur / slice over (N, d) float32 features and (N, C) values, as permutohedral.cpp
    (its SSE build) does: scale sqrt(2/3)(d+1)/sqrt((i+1)(i+2)), elevate, round half to even,
    rank with ties to the later coordinate, barycentric weights, vertices in a hash table,
    [1/2, 1, 1/2] blur along directions 0..d, output scale 1 / (1 + 2^-d)."""
    f32 = np.float32
    num_points, d = features.shape
    inv_std = f32(math.sqrt(2.0 / 3.0) * (d + 1))
    scale = [f32(1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std)) for i in range(d)]
    down, up = f32(1.0) / f32(d + 1), f32(d + 1)
    vertices: dict[tuple[int, ...], int] = {}
    splats = []  # per point: [(vertex index, weight)] for remainders 0..d
    for p in range(num_points):
        elevated = [f32(0)] * (d + 1)
        running = f32(0)
        for j in range(d, 0, -1):
            scaled = f32(features[p, j - 1]) * scale[j - 1]
            elevated[j] = f32(running - f32(j) * scaled)
            running = f32(running + scaled)
        elevated[0] = running
        rem0 = [f32(np.round(f32(e * down))) * up for e in elevated]
        total = int(sum(int(np.round(f32(e * down))) for e in elevated))
        rank = [0] * (d + 1)
        for i in range(d):
            for j in range(i + 1, d + 1):
                if f32(elevated[i] - rem0[i]) < f32(elevated[j] - rem0[j]):
                    rank[i] += 1
                else:
                    rank[j] += 1
        for i in range(d + 1):
            rank[i] += total
            if rank[i] < 0:
                rank[i] += d + 1
                rem0[i] = f32(rem0[i] + up)
            elif rank[i] > d:
                rank[i] -= d + 1
                rem0[i] = f32(rem0[i] - up)
        barycentric = [f32(0)] * (d + 2)
        for i in range(d + 1):
            v = f32(f32(elevated[i] - rem0[i]) * down)
            barycentric[d - rank[i]] = f32(barycentric[d - rank[i]] + v)
            barycentric[d - rank[i] + 1] = f32(barycentric[d - rank[i] + 1] - v)
        barycentric[0] = f32(barycentric[0] + f32(f32(1) + barycentric[d + 1]))
        corners = []
        for r in range(d + 1):
            key = tuple(int(rem0[i]) + (r if rank[i] <= d - r else r - (d + 1)) for i in range(d))
            corners.append((vertices.setdefault(key, len(vertices)), barycentric[r]))
        splats.append(corners)
    lattice = np.zeros((len(vertices) + 1, values.shape[1]), np.float32)  # last row: absent
    for p, corners in enumerate(splats):
        for vertex, weight in corners:
            lattice[vertex] += weight * values[p]
    keys = list(vertices)
    for j in range(d + 1):
        blurred = lattice.copy()
        for index, key in enumerate(keys):
            lower = tuple(k + (d if i == j else -1) for i, k in enumerate(key))
            upper = tuple(k - (d if i == j else -1) for i, k in enumerate(key))
            near = lattice[vertices.get(lower, -1)] + lattice[vertices.get(upper, -1)]
            blurred[index] = lattice[index] + f32(0.5) * near
        lattice = blurred
    alpha = f32(1.0 / (1.0 + 2.0 ** (-d)))
    out = np.zeros_like(values, dtype=np.float32)
    for p, corners in enumerate(splats):
        for vertex, weight in corners:
            out[p] += f32(weight * alpha) * lattice[vertex]
    return out, len(vertices)


def _jax_lattice_filter(features, values, bounds):
    lattice = jax.jit(functools.partial(permutohedral.build_lattice, feature_bounds=bounds))(
        jnp.asarray(features)
    )
    out = jax.jit(permutohedral.lattice_filter)(lattice, jnp.asarray(values))
    return np.asarray(out), int(lattice.num_vertices)


# ------------------------------------------------------------------------------------------------
# The lattice


@pytest.mark.parametrize(
    "case",
    ["positions", "bilateral", "integer_ties", "two_words"],
)
def test_lattice_matches_python_reference(case):
    """The sort-based lattice builds exactly the reference's vertices (same count) and filters to
    float32 rounding: the splat sums run in another order, so values differ by a few ulps of the
    largest vertex value."""
    image = _scene(9, 13, seed=3)
    rng = np.random.default_rng(0)
    if case == "positions":
        features = crf._positions(9, 13, 3.0)
        bounds = crf._position_bounds(9, 13, 3.0)
    elif case == "bilateral":
        features = np.asarray(crf._bilateral_features(jnp.asarray(image), 5.0, 13.0))
        bounds = crf._position_bounds(9, 13, 5.0) + ((0.0, 255.0 / 13.0),) * 3
    elif case == "integer_ties":  # exact ties in rounding and ranking (integer features)
        features = rng.integers(0, 4, (117, 3)).astype(np.float32)
        bounds = ((0.0, 3.0),) * 3
    else:  # a key range that needs two int32 words
        features = np.asarray(crf._bilateral_features(jnp.asarray(image), 0.05, 0.5))
        bounds = crf._position_bounds(9, 13, 0.05) + ((0.0, 255.0 / 0.5),) * 3
        assert len(permutohedral._KeyCodec(bounds).words) == 2
    values = rng.uniform(0.0, 1.0, (features.shape[0], 4)).astype(np.float32)
    expected, expected_vertices = reference_lattice_filter(features, values)
    got, num_vertices = _jax_lattice_filter(features, values, bounds)
    assert num_vertices == expected_vertices
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_lattice_chunked_and_trimmed_agree():
    """The chunked per-vertex loops (dynamic vertex count) and the trimmed lattice (static count)
    give the same filter, with a chunk much smaller than the vertex count."""
    features = crf._positions(17, 23, 2.0)
    bounds = crf._position_bounds(17, 23, 2.0)
    values = np.random.default_rng(1).uniform(size=(17 * 23, 3)).astype(np.float32)
    build = functools.partial(permutohedral.build_lattice, feature_bounds=bounds, chunk=16)
    lattice = jax.jit(build)(jnp.asarray(features))
    assert int(lattice.num_vertices) > 3 * 16
    chunked = jax.jit(permutohedral.lattice_filter)(lattice, jnp.asarray(values))
    trimmed = permutohedral.lattice_filter(lattice.trim(), jnp.asarray(values))
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(trimmed), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# The mean field


def test_exact_method_matches_float64_reference():
    """method="exact" is the float64 mean field up to float32 rounding. Logits reach |U| <= 11.5
    plus messages <= compat * max(D K D 1) ~ 13 * 1.5, so one step's rounding is ~3e-6 on Q; the
    map is contracting at these weights, and over 10 steps the error stays below 3e-5."""
    image = _scene(12, 16, seed=0)
    probs = _cam_probs(12, 16, 4, seed=0)
    expected = reference_crf(image, probs, iterations=10)
    got = np.asarray(dense_crf(image, probs, iterations=10, method="exact"))
    assert got.dtype == np.float32 and got.shape == (12, 16, 4)
    np.testing.assert_allclose(got, expected, rtol=0, atol=3e-5)


def test_zero_iterations_is_the_normalised_clipped_probs():
    probs = _cam_probs(12, 16, 4, seed=2, alpha=24.0)
    clipped = np.clip(probs.astype(np.float64), 1e-5, 1.0)
    got = np.asarray(dense_crf(_scene(12, 16, seed=2), probs, iterations=0))
    np.testing.assert_allclose(got, clipped / clipped.sum(-1, keepdims=True), rtol=2e-6, atol=1e-7)


# The permutohedral approximation against exact kernels. Measured over 42 settings (12x16 to 20x24
# scenes; Gaussian sxy 1.5/3/5; bilateral (sxy, srgb) = (80, 13), (32, 13), (6, 20), (4, 10)):
# the normalised message D K D v has a median relative error of 0.6-3.3% and a largest error of
# 2.5-18% of its maximum (35% once, with the fine (6, 20) kernel): the lattice's blur is only
# roughly Gaussian, its spread depending on direction and on the position in the lattice. After 10
# mean-field iterations the argmax agreed on 95.8-100% of pixels (14 cases of 192-400 pixels); Q
# itself can differ by up to ~1 at pixels where two labels compete, because mean field is
# bistable there, so Q is not bounded elementwise. The bounds leave ~1.5x margin.
LATTICE_MEDIAN_MESSAGE_ERROR = 0.05
LATTICE_MAX_MESSAGE_ERROR = 0.5
LATTICE_MIN_ARGMAX_AGREEMENT = 0.93


@pytest.mark.parametrize("kernel", ["gaussian_3", "bilateral_80_13", "bilateral_6_20"])
def test_lattice_message_error_is_bounded(kernel):
    height, width = 16, 20
    image = _scene(height, width, seed=1)
    values = _cam_probs(height, width, 4, seed=1).reshape(height * width, 4)
    values = values / values.sum(-1, keepdims=True)
    if kernel == "gaussian_3":
        features, bounds = (
            crf._positions(height, width, 3.0),
            crf._position_bounds(height, width, 3.0),
        )
    else:
        sxy, srgb = (80.0, 13.0) if kernel == "bilateral_80_13" else (6.0, 20.0)
        features = np.asarray(crf._bilateral_features(jnp.asarray(image), sxy, srgb))
        bounds = crf._position_bounds(height, width, sxy) + ((0.0, 255.0 / srgb),) * 3
    ones = np.ones((height * width, 1), np.float32)
    norm = 1.0 / np.sqrt(_jax_lattice_filter(features, ones, bounds)[0])
    message = norm * _jax_lattice_filter(features, (norm * values).astype(np.float32), bounds)[0]
    f = features.astype(np.float64)
    exact_kernel = np.exp(-0.5 * ((f[:, None] - f[None]) ** 2).sum(-1))
    exact_norm = 1.0 / np.sqrt(exact_kernel.sum(1, keepdims=True))
    exact = exact_norm * (exact_kernel @ (exact_norm * values))
    relative = np.abs(message - exact) / np.abs(exact)
    assert np.median(relative) < LATTICE_MEDIAN_MESSAGE_ERROR
    assert np.abs(message - exact).max() < LATTICE_MAX_MESSAGE_ERROR * np.abs(exact).max()


@pytest.mark.parametrize(
    "height, width, num_labels, alpha, params",
    [
        (12, 16, 4, 1.0, {}),
        (12, 16, 4, 24.0, {}),
        (16, 20, 4, 1.0, dict(bilateral_sxy=6.0, bilateral_srgb=20.0)),
    ],
)
def test_lattice_method_agrees_with_the_exact_mean_field(height, width, num_labels, alpha, params):
    image = _scene(height, width, seed=height)
    probs = _cam_probs(height, width, num_labels, seed=num_labels, alpha=alpha)
    expected = reference_crf(image, probs, iterations=10, **params)
    got = np.asarray(dense_crf(image, probs, iterations=10, **params))
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= LATTICE_MIN_ARGMAX_AGREEMENT
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


def _pydensecrf(image, probs, iterations, **params):
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    params = {**DEFAULTS, **params}
    height, width, num_labels = probs.shape
    unary = -np.log(np.clip(probs.transpose(2, 0, 1), 1e-5, 1.0)).reshape(num_labels, -1)
    model = dcrf.DenseCRF2D(width, height, num_labels)
    model.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    model.addPairwiseGaussian(sxy=params["gaussian_sxy"], compat=params["gaussian_compat"])
    model.addPairwiseBilateral(
        sxy=params["bilateral_sxy"],
        srgb=params["bilateral_srgb"],
        rgbim=np.ascontiguousarray(image),
        compat=params["bilateral_compat"],
    )
    q = np.array(model.inference(iterations), dtype=np.float32)
    return q.reshape(num_labels, height, width).transpose(1, 2, 0)


@pytest.mark.parametrize(
    "iterations, alpha, params",
    [(10, 1.0, {}), (10, 24.0, {}), (1, 1.0, dict(bilateral_sxy=32.0))],
)
def test_lattice_method_matches_pydensecrf(iterations, alpha, params):
    """Same lattice, same arithmetic: the marginals agree to float32 summation-order differences
    (measured <= 2e-5 after 10 iterations), where exact kernels would differ by ~0.1."""
    image = _scene(40, 56, seed=7)
    probs = _cam_probs(40, 56, 6, seed=7, alpha=alpha)
    expected = _pydensecrf(image, probs, iterations, **params)
    got = np.asarray(dense_crf(image, probs, iterations=iterations, **params))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.999


# ------------------------------------------------------------------------------------------------
# jit, vmap and input validation


@pytest.mark.slow
def test_jit_and_vmap():
    """Inside an enclosing jit and under vmap (a batch of same-size images), as the CAM inference
    calls it: the same marginals as one image at a time."""
    images = np.stack([_scene(12, 16, seed=s) for s in range(2)])
    probs = np.stack([_cam_probs(12, 16, 4, seed=s) for s in range(2)])
    single = [np.asarray(dense_crf(images[i], probs[i], iterations=3)) for i in range(2)]
    batched = jax.jit(jax.vmap(functools.partial(dense_crf, iterations=3)))(images, probs)
    np.testing.assert_allclose(np.asarray(batched), np.stack(single), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "image, probs, kwargs, match",
    [
        (np.zeros((4, 5), np.uint8), np.ones((4, 5, 2), np.float32), {}, "image must have shape"),
        (
            np.zeros((4, 5, 4), np.uint8),
            np.ones((4, 5, 2), np.float32),
            {},
            "image must have shape",
        ),
        (
            np.zeros((4, 5, 3), np.float32),
            np.ones((4, 5, 2), np.float32),
            {},
            "image must be uint8",
        ),
        (np.zeros((4, 5, 3), np.uint8), np.ones((4, 5), np.float32), {}, "probs must have shape"),
        (np.zeros((4, 5, 3), np.uint8), np.ones((4, 5, 2), np.int32), {}, "probs must be a float"),
        (np.zeros((4, 5, 3), np.uint8), np.ones((5, 4, 2), np.float32), {}, "does not match image"),
        (
            np.zeros((4, 5, 3), np.uint8),
            np.ones((4, 5, 2), np.float32),
            {"iterations": -1},
            "iterations",
        ),
        (
            np.zeros((4, 5, 3), np.uint8),
            np.ones((4, 5, 2), np.float32),
            {"iterations": 2.0},
            "iterations",
        ),
        (
            np.zeros((4, 5, 3), np.uint8),
            np.ones((4, 5, 2), np.float32),
            {"gaussian_sxy": 0},
            "gaussian_sxy",
        ),
        (
            np.zeros((4, 5, 3), np.uint8),
            np.ones((4, 5, 2), np.float32),
            {"bilateral_srgb": -1.0},
            "bilateral_srgb",
        ),
        (
            np.zeros((4, 5, 3), np.uint8),
            np.ones((4, 5, 2), np.float32),
            {"bilateral_compat": math.inf},
            "bilateral_compat",
        ),
        (
            np.zeros((4, 5, 3), np.uint8),
            np.ones((4, 5, 2), np.float32),
            {"method": "fast"},
            "method",
        ),
        (
            np.zeros((65, 64, 3), np.uint8),
            np.ones((65, 64, 2), np.float32),
            {"method": "exact"},
            "exact",
        ),
    ],
)
def test_bad_input_names_the_argument(image, probs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dense_crf(image, probs, **kwargs)
