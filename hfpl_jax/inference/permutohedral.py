"""Permutohedral-lattice Gaussian filtering in JAX (Adams, Baek and Davis, Eurographics 2010).

A Gaussian filter over N points with d-dimensional features, ``out_i = sum_j k(f_i, f_j) v_j``,
approximated in O(N (d+1)) by three linear maps: *splat* each point onto the d+1 vertices of the
lattice simplex that encloses its elevated feature (barycentric weights), *blur* the vertex values
with the kernel [1/2, 1, 1/2] along each of the d+1 lattice directions in turn, and *slice* the
blurred values back at the points (the same barycentric weights).

The arithmetic reproduces Krähenbühl's ``permutohedral.cpp`` (the filter inside pydensecrf, which
``tool/imutils.crf_inference`` of the reference calls): the same feature scaling
``sqrt(2/3) (d+1) / sqrt((i+1)(i+2))``, elevation order, round-half-to-even rounding of its x86
(SSE) build, rank tie-breaks, barycentric weights, blur order 0..d and output scale
``1 / (1 + 2^-d)``, so a vertex exists here exactly when it exists there. Floating-point sums run in
a different order, so values agree to float32 rounding, not bit for bit.

The C++ code finds vertices through a hash table. Here, with static shapes, the d+1 vertex keys of
every point are packed into int32 words, sorted and de-duplicated; a vertex's index is its rank
among the distinct keys (a binary search), and the blur's neighbour keys are found the same way.
The number of distinct vertices M is data-dependent while arrays have the static capacity N (d+1),
so the per-vertex work (neighbour search, blur) runs over ceil(M / chunk) chunks of a
``lax.fori_loop`` with a dynamic trip count: its cost follows M, not the capacity. When the features
are known at trace time (the Gaussian kernel's pixel coordinates), ``build_lattice`` can be run
eagerly and ``Lattice.trim`` shrinks the arrays to exactly M vertices.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["Lattice", "build_lattice", "filter_workspace", "lattice_filter", "lattice_filter_into"]

_WORD_LIMIT = 2**31 - 1  # packed words stay below this, so int32 max is a sentinel above every key
_SENTINEL = np.int32(2**31 - 1)
DEFAULT_CHUNK = 8192


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "offsets",
        "weights",
        "neighbours",
        "num_vertices",
        "splat_points",
        "splat_weights",
    ],
    meta_fields=["chunk"],
)
@dataclasses.dataclass(frozen=True)
class Lattice:
    """A permutohedral lattice built over N points with d-dimensional features.

    offsets: (d+1, N) int32, the vertex index of each point's simplex corner r (remainder r).
    weights: (d+1, N) float32 barycentric weights (each column sums to 1).
    neighbours: (d+1, 2, V) int32, the vertex one step down / up each lattice direction; V (the
      vertex capacity) marks a missing neighbour (its value is 0 in the blur).
    num_vertices: the number of distinct vertices M <= V: a Python int after ``trim``, else an
      int32 scalar.
    chunk: the static row count of one step of the per-vertex loops (divides V).
    splat_points, splat_weights: (M, L) after ``trim``, else None: the points splatting onto each
      vertex (in point order; padded with point 0 and weight 0), so that the splat is a gather.
    """

    offsets: jax.Array
    weights: jax.Array
    neighbours: jax.Array
    num_vertices: int | jax.Array
    chunk: int
    splat_points: jax.Array | None = None
    splat_weights: jax.Array | None = None

    @property
    def capacity(self) -> int:
        return self.neighbours.shape[-1]

    def trim(self) -> Lattice:
        """The same lattice with arrays cut to exactly M vertices, and the splat as a gather
        (XLA's scatter-add is several times slower than a fused gather): needs concrete values,
        e.g. a lattice whose features are known when the program is traced."""
        m = int(self.num_vertices)
        neighbours = np.asarray(self.neighbours)[..., :m]
        neighbours = np.where(neighbours >= m, m, neighbours).astype(np.int32)
        offsets, weights = np.asarray(self.offsets), np.asarray(self.weights)
        num_points = offsets.shape[1]
        vertex = offsets.reshape(-1)
        point = np.tile(np.arange(num_points, dtype=np.int32), offsets.shape[0])
        order = np.lexsort((point, vertex))  # by vertex, then point: the C++ splat order
        counts = np.bincount(vertex, minlength=m)
        starts = np.cumsum(counts) - counts
        slot = np.arange(vertex.size) - starts[vertex[order]]
        splat_points = np.zeros((m, counts.max()), np.int32)
        splat_weights = np.zeros((m, counts.max()), np.float32)
        splat_points[vertex[order], slot] = point[order]
        splat_weights[vertex[order], slot] = weights.reshape(-1)[order]
        return Lattice(offsets, weights, neighbours, m, m, splat_points, splat_weights)


def _scale_factors(d: int) -> np.ndarray:
    # permutohedral.cpp: inv_std_dev = sqrt(2/3) (d+1) stored as float, then
    # 1 / sqrt((i+2)(i+1)) * inv_std_dev evaluated in double and stored as float.
    inv_std_dev = float(np.float32(math.sqrt(2.0 / 3.0) * (d + 1)))
    return np.array(
        [1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev for i in range(d)], np.float32
    )


def _unfused(product: jax.Array, zero: jax.Array) -> jax.Array:
    """``product``, rounded to float32 on its own. XLA contracts ``a * b + c`` into a fused
    multiply-add (one rounding) where the C++ code rounds the product first, and the elevated
    coordinates must match it bit for bit (they decide which vertices exist). OR-ing the bits
    with ``zero``, a zero the compiler cannot prove to be one (a reduction computed in another
    kernel), keeps the two operations apart."""
    bits = lax.bitcast_convert_type(product, jnp.int32) | zero
    return lax.bitcast_convert_type(bits, jnp.float32)


def _elevate(features: jax.Array) -> jax.Array:
    """(d, N) -> (d+1, N): E f, the elevated coordinates (summing to 0), accumulated in the C++
    code's order (from the last feature down), so the rounding below sees the same floats."""
    d = features.shape[0]
    scale = _scale_factors(d)
    zero = (jnp.max(features[0]) < jnp.min(features[0])).astype(jnp.int32)  # always 0
    elevated = [None] * (d + 1)
    running = jnp.zeros(features.shape[1:], jnp.float32)
    for j in range(d, 0, -1):
        scaled = _unfused(features[j - 1] * scale[j - 1], zero)
        elevated[j] = running - _unfused(np.float32(j) * scaled, zero)
        running = running + scaled
    elevated[0] = running
    return jnp.stack(elevated)


def _simplex(features: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each point's enclosing simplex, (d, N) -> rem0, rank (d+1, N) int32, barycentric (d+1, N).

    rem0: the nearest remainder-0 lattice point (multiples of d+1); rank: the position of each
    coordinate of the residual in descending order; barycentric[r]: the weight of the vertex with
    remainder r. Follows Adams et al. §3.1 and the C++ code's rounding (half to even, as its SSE
    build) and tie-break: of two equal residual coordinates, the later one ranks higher.
    (Coordinate-major, so elementwise work runs along N.)
    """
    d = features.shape[0]
    elevated = _elevate(features)
    down = np.float32(1.0) / np.float32(d + 1)
    up = np.float32(d + 1)
    rounded = jnp.round(elevated * down)
    rem0 = rounded * up
    total = jnp.sum(rounded, axis=0)  # small integers: exact in any order
    residual = elevated - rem0
    # For i < j the C++ code adds 1 to rank_i if residual_i < residual_j, else to rank_j.
    # (Sums of d+1 full-width terms rather than a (d+1, d+1, N) reduction: one fused loop.)
    index = np.arange(d + 1)[:, None]
    rank = total
    for j in range(d + 1):
        other = residual[j][None]
        beats = jnp.where(index < j, residual < other, (index > j) & ~(other < residual))
        rank = rank + beats.astype(jnp.float32)
    wrap = jnp.where(rank < 0, up, 0.0) - jnp.where(rank >= up, up, 0.0)
    rank, rem0 = rank + wrap, rem0 + wrap
    scaled = (elevated - rem0) * down
    # barycentric[p] = v[rank d-p] - v[rank d-p+1] (p >= 1), barycentric[0] = v[rank d] +
    # (1 - v[rank 0]): each is the one or two terms the C++ code accumulates.
    by_rank = jnp.zeros_like(scaled)  # by_rank[k] = v_i for the i of rank k (one term: exact)
    for i in range(d + 1):
        by_rank = by_rank + jnp.where(rank[i][None] == index, scaled[i][None], 0.0)
    descending = by_rank[::-1]  # descending[p] = v[rank d-p]
    barycentric = jnp.concatenate(
        [descending[:1] + (np.float32(1.0) - by_rank[:1]), descending[1:] - descending[:-1]]
    )
    return rem0.astype(jnp.int32), rank.astype(jnp.int32), barycentric


class _KeyCodec:
    """Packs a vertex (its first d integer coordinates, all congruent to its remainder r mod d+1)
    into int32 words: digits r and q_i = (c_i - r) / (d+1) - q_min_i, mixed radix, grouped so each
    word stays below 2^31 - 1. The coordinate bounds are static, derived from the feature bounds
    and widened by one lattice step so that neighbour keys are representable too."""

    def __init__(self, feature_bounds: tuple[tuple[float, float], ...]):
        d = len(feature_bounds)
        self.d = d
        scale = _scale_factors(d).astype(np.float64)
        lo_cf = [min(a * s, b * s) for (a, b), s in zip(feature_bounds, scale, strict=True)]
        hi_cf = [max(a * s, b * s) for (a, b), s in zip(feature_bounds, scale, strict=True)]
        q_lo, q_hi = [], []
        for i in range(d):
            e_lo = sum(lo_cf[i:]) - (i * hi_cf[i - 1] if i else 0.0)
            e_hi = sum(hi_cf[i:]) - (i * lo_cf[i - 1] if i else 0.0)
            # rem0 is within 1.5 (d+1) of the elevated value (rounding, then one wrap), the
            # canonical offset within d; one more lattice step for neighbours, one for float slack.
            c_lo = e_lo - 1.5 * (d + 1) - d
            c_hi = e_hi + 1.5 * (d + 1) + d
            q_lo.append(math.floor(c_lo / (d + 1)) - 2)
            q_hi.append(math.ceil(c_hi / (d + 1)) + 2)
        self.q_lo = q_lo
        radices = [d + 1] + [h - lo + 1 for lo, h in zip(q_lo, q_hi, strict=True)]
        self.words: list[list[tuple[int, int]]] = []  # per word: (digit index, radix)
        product = _WORD_LIMIT
        for index, radix in enumerate(radices):
            if radix > _WORD_LIMIT:
                raise ValueError(
                    f"lattice coordinate {index} spans {radix} values, more than an int32 holds: "
                    "the feature scale (sxy or srgb) is too small for the image"
                )
            if product * radix > _WORD_LIMIT:
                self.words.append([])
                product = 1
            self.words[-1].append((index, radix))
            product *= radix

    def pack(self, remainder: jax.Array, coords: list[jax.Array]) -> tuple[jax.Array, ...]:
        """remainder: int32 (...,), coords: d int32 arrays (...,) -> tuple of int32 words."""
        digits = [remainder] + [
            (c - remainder) // (self.d + 1) - lo for c, lo in zip(coords, self.q_lo, strict=True)
        ]
        words = []
        for word in self.words:
            value = jnp.zeros_like(remainder)
            for index, radix in word:
                value = value * radix + digits[index]
            words.append(value)
        return tuple(words)

    def unpack(self, words: tuple[jax.Array, ...]) -> tuple[jax.Array, list[jax.Array]]:
        digits = [None] * (self.d + 1)
        for value, word in zip(words, self.words, strict=True):
            for index, radix in reversed(word):
                digits[index] = value % radix
                value = value // radix
        remainder = digits[0]
        coords = [
            (q + lo) * (self.d + 1) + remainder for q, lo in zip(digits[1:], self.q_lo, strict=True)
        ]
        return remainder, coords


def _lex_less(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> jax.Array:
    less = a[-1] < b[-1]
    for x, y in zip(a[-2::-1], b[-2::-1], strict=True):
        less = (x < y) | ((x == y) & less)
    return less


def _search(table: tuple[jax.Array, ...], queries: tuple[jax.Array, ...], size: int) -> jax.Array:
    """Index of each query among the sorted distinct keys ``table`` (words, length ``size``,
    padded with the sentinel), or ``size`` where the key is absent (a branchless lower bound)."""

    def halve(i, position):
        step = jnp.int32(1) << (size.bit_length() - 1 - i)
        candidate = position + step
        probe = jnp.minimum(candidate, size) - 1
        entry = tuple(w.at[probe].get(mode="promise_in_bounds") for w in table)
        return jnp.where((candidate <= size) & _lex_less(entry, queries), candidate, position)

    position = lax.fori_loop(0, size.bit_length(), halve, jnp.zeros(queries[0].shape, jnp.int32))
    probe = jnp.minimum(position, size - 1)
    found = position < size
    for w, q in zip(table, queries, strict=True):
        found &= w.at[probe].get(mode="promise_in_bounds") == q
    return jnp.where(found, position, size)


def _num_chunks(num_vertices, chunk: int):
    return (num_vertices + chunk - 1) // chunk


def build_lattice(
    features: jax.Array,
    feature_bounds: tuple[tuple[float, float], ...],
    *,
    chunk: int = DEFAULT_CHUNK,
) -> Lattice:
    """Builds the lattice for features (N, d) float32 whose column k lies in feature_bounds[k].

    The bounds (static Python floats, e.g. (0, (W-1)/sxy) for x / sxy) size the integer key
    packing; features outside them give a wrong lattice. Jittable; cost O(N (d+1) log(N (d+1))).
    """
    n, d = features.shape
    if len(feature_bounds) != d:
        raise ValueError(f"feature_bounds has {len(feature_bounds)} entries, features has d={d}")
    codec = _KeyCodec(feature_bounds)
    features = features.astype(jnp.float32)
    rem0, rank, barycentric = _simplex(features.T)
    # Vertex r of the simplex: rem0 + the canonical simplex's corner r permuted by rank, whose
    # coordinate is r where rank <= d - r and r - (d+1) elsewhere (stored: the first d of d+1).
    remainder = np.arange(d + 1, dtype=np.int32)[:, None]
    coords = [
        rem0[i] + jnp.where(rank[i] <= d - remainder, remainder, remainder - (d + 1))
        for i in range(d)
    ]
    words = codec.pack(jnp.broadcast_to(remainder, (d + 1, n)), coords)
    entries = tuple(w.reshape(-1) for w in words)  # remainder-major: entry r * N + i
    size = n * (d + 1)

    # Distinct keys, in sorted order, packed into the first M slots of `table`; the table is
    # padded to whole chunks with the sentinel, and index `capacity` means "absent".
    chunk = min(chunk, size)
    capacity = -(-size // chunk) * chunk
    ordered = (
        lax.sort(entries, num_keys=len(entries)) if len(entries) > 1 else (jnp.sort(entries[0]),)
    )
    is_new = jnp.zeros((size,), bool).at[0].set(True)
    for w in ordered:
        is_new = is_new.at[1:].set(is_new[1:] | (w[1:] != w[:-1]))
    slot = jnp.cumsum(is_new.astype(jnp.int32)) - 1
    num_vertices = slot[-1] + 1
    slot = jnp.where(is_new, slot, capacity)
    table = tuple(jnp.full((capacity,), _SENTINEL).at[slot].set(w, mode="drop") for w in ordered)
    offsets = _search(table, entries, capacity).reshape(d + 1, n)

    def neighbours_of_chunk(index, neighbours):
        start = index * chunk
        words = tuple(lax.dynamic_slice(w, (start,), (chunk,)) for w in table)
        remainder, coords = codec.unpack(words)
        # Queries (d+1, 2, chunk): n1 steps +d along direction j and -1 along the others, n2 the
        # opposite; the stored coordinates are the first d of d+1.
        step = np.full((d + 1, 2, d), -1, np.int32)
        for j in range(d):
            step[j, :, j] = d
        step[:, 1] *= -1
        moved = [x[None, None, :] + step[:, :, k, None] for k, x in enumerate(coords)]
        sign = np.array([1, -1], np.int32)[None, :, None]
        moved_remainder = (remainder[None, None, :] - sign) % (d + 1)
        moved_remainder = jnp.broadcast_to(moved_remainder, (d + 1, 2, chunk))
        found = _search(table, codec.pack(moved_remainder, moved), capacity)
        return lax.dynamic_update_slice(neighbours, found, (0, 0, start))

    neighbours = jnp.full((d + 1, 2, capacity), capacity, jnp.int32)
    neighbours = lax.fori_loop(0, _num_chunks(num_vertices, chunk), neighbours_of_chunk, neighbours)
    return Lattice(offsets, barycentric, neighbours, num_vertices, chunk)


def filter_workspace(lattice: Lattice, num_channels: int) -> tuple[jax.Array, jax.Array] | None:
    """Two zeroed (V+1, C) float32 vertex buffers for ``lattice_filter_into`` (None when the
    lattice is trimmed): loops that filter repeatedly carry them instead of re-allocating and
    zeroing capacity-sized buffers, so the per-call cost follows M, not V."""
    if isinstance(lattice.num_vertices, int):
        return None
    shape = (lattice.capacity + 1, num_channels)
    return jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)


def lattice_filter(lattice: Lattice, values: jax.Array) -> jax.Array:
    """Approximate Gaussian filtering of values (N, C) float32: splat, blur, slice.

    out_i = alpha sum_r w_ri B(S v)[o_ri], S v[m] = sum_{(i, r): o_ri = m} w_ri v_i, B the [1/2, 1,
    1/2] blur along lattice directions 0..d, alpha = 1 / (1 + 2^-d). Approximates
    c sum_j exp(-|f_i - f_j|^2 / 2) v_j for a constant c.
    """
    out, _ = lattice_filter_into(lattice, values, filter_workspace(lattice, values.shape[-1]))
    return out


def lattice_filter_into(lattice: Lattice, values: jax.Array, workspace):
    """``lattice_filter`` with the vertex buffers of ``filter_workspace`` passed in and returned
    (their rows >= M hold stale values; row V stays zero), for use inside loops."""
    d = lattice.offsets.shape[0] - 1
    capacity = lattice.capacity
    num_channels = values.shape[-1]
    offsets, weights, neighbours = (
        jnp.asarray(lattice.offsets),
        jnp.asarray(lattice.weights),
        jnp.asarray(lattice.neighbours),
    )
    trimmed = isinstance(lattice.num_vertices, int)
    if trimmed:  # exactly M rows: whole-array ops, no chunking
        zeros = jnp.zeros((capacity + 1, num_channels), values.dtype)
        buffers = [zeros, zeros]
    else:
        chunk = lattice.chunk
        num_chunks = _num_chunks(lattice.num_vertices, chunk)
        zero_rows = jnp.zeros((chunk, num_channels), values.dtype)
        buffers = list(workspace)
        buffers[0] = lax.fori_loop(
            0,
            num_chunks,
            lambda i, b: lax.dynamic_update_slice(b, zero_rows, (i * chunk, 0)),
            buffers[0],
        )
    # Row `capacity` stands for a missing neighbour: no write reaches it, so it stays zero.
    for r in range(d + 1):
        buffers[0] = (
            buffers[0].at[offsets[r]].add(weights[r][:, None] * values, mode="promise_in_bounds")
        )

    def blur_rows(source, near, rows):
        lower = source.at[near[0]].get(mode="promise_in_bounds")
        upper = source.at[near[1]].get(mode="promise_in_bounds")
        return rows + 0.5 * (lower + upper)

    current = 0
    for j in range(d + 1):
        source, target = buffers[current], buffers[1 - current]
        if trimmed:
            target = lax.dynamic_update_slice(
                target, blur_rows(source, neighbours[j], source[:capacity]), (0, 0)
            )
        else:

            def blur_chunk(index, target, source=source, j=j):
                start = index * chunk
                near = lax.dynamic_slice(neighbours[j], (0, start), (2, chunk))
                rows = lax.dynamic_slice(source, (start, 0), (chunk, num_channels))
                return lax.dynamic_update_slice(target, blur_rows(source, near, rows), (start, 0))

            target = lax.fori_loop(0, num_chunks, blur_chunk, target)
        buffers[1 - current] = target
        current = 1 - current
    alpha = np.float32(1.0 / (1.0 + 2.0 ** (-d)))
    out = jnp.zeros_like(values)
    for r in range(d + 1):
        vertex_values = buffers[current].at[offsets[r]].get(mode="promise_in_bounds")
        out = out + (weights[r] * alpha)[:, None] * vertex_values
    # Materialise the slice on its own (see _unfused): otherwise XLA fuses it into the caller's
    # softmax reduction, a library fusion that cannot take gathers, and writes each of the d+1
    # gathered (N, C) arrays to memory first.
    zero = (jnp.max(values[:, 0]) < jnp.min(values[:, 0])).astype(jnp.int32)
    out = _unfused(out, zero)
    return out, (None if trimmed else tuple(buffers))
