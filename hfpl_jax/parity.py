"""``hfpl-jax compare-torch``: run the official PyTorch code and hfpl-jax side by side.

Imports the user's checkout of the official HFPL code (``--reference``), loads identical weights
into the reference module and the Flax model (``--weights``: a reference checkpoint ``.pth``, the
ImageNet ResNet-38 ``.params`` with seeded heads, or, by default, every tensor derived from
``--seed`` by ``hfpl_jax.weights.seeded_state_dict``), runs identical inputs and prints, for every
output and for the gradient of a loss with respect to every parameter group, the maximum absolute
and relative error. The relative error of an array is ``max |jax - torch| / max |torch|``. Exits 1
when an error exceeds ``--forward-tol`` (outputs, loss values) or ``--grad-tol`` (gradients).

Loss per arch:

- ``seam``: the full CAM training loss of the reference (``train_cam_voc.py``): the statements of
  its training loop, from the top of the loop body to ``loss = ...``, are read from the checkout
  with ``ast`` and executed with the reference network (``hfpl_jax.reference.CamLossCode``;
  nothing of the reference is copied into hfpl-jax); the JAX side is
  ``hfpl_jax.train.cam_loss.cam_loss_fn``. Both sides run with dropout off (so the two branches are
  deterministic) and the importance-sampling draws replaced by the same fixed indices.
- ``affinity``: ``sum(cos(0.37 i) * affinity)`` (a fixed linear test loss).
- ``deeplab_largefov``: pixel-wise cross entropy against fixed random targets, with the final
  stage's training-mode BatchNorm (batch statistics) and dropout off.

The comparison runs on the CPU in float32 with ``jax_default_matmul_precision="highest"``.
``--float64`` runs both frameworks in float64 instead; ``--conditioning`` adds, per parameter
group, each framework's float32 gradient error against PyTorch in float64, which shows where the
problem itself is ill-conditioned (the final stage's batch-statistics gradients at test sizes: there
PyTorch's float32 is 1-15% from its float64 result, and the port's error is of the same size), and
then accepts a gradient tensor outside ``--grad-tol`` of PyTorch's float32 result when JAX's
float32 error against float64 is within ``max(--grad-tol, PyTorch float32's own error)``
(``add_gradient_rows``). ``--conv-impl`` picks the models' convolution implementation.

From Python: ``table = compare(CompareOptions(reference=path, arch="affinity"))`` (the fields are
the flags; ``parse_options`` builds them from a command line). Each arch's reference module and
comparison are registered once in ``COMPARISONS``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
from collections.abc import Callable

import numpy as np

from hfpl_jax import atomic_io
from hfpl_jax.reference import (
    CamLossCode,
    build_affinity,
    build_deeplab_largefov,
    build_seam,
    import_reference,
)

__all__ = [
    "ARCHS",
    "COMPARISONS",
    "CompareOptions",
    "Comparison",
    "Table",
    "add_gradient_rows",
    "compare",
    "errors",
    "main",
    "parse_options",
]

CONV_IMPLS = ("auto", "xla", "dot")  # hfpl_jax.models.CONV_IMPLS, without importing jax here


@dataclasses.dataclass(frozen=True)
class CompareOptions:
    """What ``compare`` runs: the ``compare-torch`` flags as typed fields (see ``main --help``).

    Attributes:
      reference: checkout of the official HFPL code.
      arch: one of ``ARCHS``.
      weights: a reference checkpoint ``.pth``, the ImageNet ``.params`` (heads seeded) or
        converted ``.npz``; None: every tensor from ``seed`` (``weights.seeded_state_dict``).
      seed: seed of the weights, inputs and labels.
      num_classes: foreground classes (20 VOC, 80 the COCO SEAM).
      size: input ``(H, W)``, each >= 16. batch: images per batch (>= 1; DeepLab uses >= 2).
      num_samples: ISL draws per class (``seam``).
      forward_tol, grad_tol: relative tolerances of the outputs / loss values and the gradients.
      json: also write the table here (None: do not).
      conv_impl: the Flax models' convolution implementation (``models.build``'s ``conv_impl``).
      conditioning: also run the reference in float64 and accept a gradient at least as close to
        it as the reference's float32 one (``add_gradient_rows``).
      float64: run both frameworks in float64 (excludes ``conditioning``).
    """

    reference: str
    arch: str = "seam"
    weights: str | None = None
    seed: int = 0
    num_classes: int = 20
    size: tuple[int, int] = (64, 64)
    batch: int = 2
    num_samples: int = 10
    forward_tol: float = 1e-4
    grad_tol: float = 1e-3
    json: str | None = None
    conv_impl: str = "auto"
    conditioning: bool = False
    float64: bool = False

    def __post_init__(self):
        if self.arch not in COMPARISONS:
            raise ValueError(f"--arch must be one of {ARCHS}, found {self.arch!r}")
        if self.batch < 1:
            raise ValueError("--batch must be >= 1")
        if len(self.size) != 2 or min(self.size) < 16:
            raise ValueError(f"--size: expected H or HxW >= 16, found {self.size}")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"--conv-impl must be one of {CONV_IMPLS}, found {self.conv_impl!r}")
        if self.conditioning and self.float64:
            raise ValueError("--conditioning compares float32 with float64; drop --float64")

    @property
    def np_dtype(self) -> type:
        return np.float64 if self.float64 else np.float32

    @property
    def jnp_dtype(self):
        import jax.numpy as jnp

        return jnp.float64 if self.float64 else jnp.float32


# ------------------------------------------------------------------------------------------------
# The reference side


def build_reference(arch: str, num_classes: int):
    """The reference's module for ``arch`` (``num_classes`` 20: VOC nets; 80: the COCO SEAM)."""
    if arch not in COMPARISONS:
        raise ValueError(f"--arch must be one of {ARCHS}, found {arch!r}")
    return COMPARISONS[arch].build_reference(num_classes)


def _disable_dropout(net) -> None:
    import torch

    for module in net.modules():
        if isinstance(module, torch.nn.Dropout | torch.nn.Dropout2d):
            module.p = 0.0


def _set_training_flags(net, training: bool) -> None:
    """Set ``.training`` on every module directly: ``resnet38d.Net.train()`` is overridden (it
    forces BN to eval) and only some stages call it."""
    for module in net.modules():
        module.training = training


def reference_cam_loss(reference: str, net, images, labels, isl_indices, *, num_samples: int):
    """Run the reference's CAM-training loss on ``net``: returns the loop's namespace.

    ``images`` NCHW tensor, ``labels`` ``(N, K)`` tensor, ``isl_indices`` ``(N*K, S)`` int64 used in
    place of ``torch.multinomial``.
    """
    code = CamLossCode(reference)
    namespace = code.namespace(net, images, labels, num_samples=num_samples)
    return code.run(namespace, isl_indices)


# ------------------------------------------------------------------------------------------------
# Comparison


def errors(got, want) -> tuple[float, float]:
    """``(max |got - want|, max |got - want| / max |want|)`` in float64."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValueError(f"shape mismatch: jax {got.shape} vs torch {want.shape}")
    abs_err = float(np.max(np.abs(got - want))) if got.size else 0.0
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return abs_err, (abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else float("inf")))


class Table:
    """Rows of (quantity, max abs, max rel, tolerance, detail)."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(
        self,
        quantity: str,
        abs_err: float,
        rel_err: float,
        tol: float,
        detail: str = "",
        ok: bool | None = None,
    ):
        """Add a row; ``ok`` defaults to ``rel_err <= tol``."""
        ok = rel_err <= tol if ok is None else ok
        self.rows.append({"quantity": quantity, "max_abs": abs_err, "max_rel": rel_err,
                          "tol": tol, "ok": bool(ok), "detail": detail})  # fmt: skip

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.rows)

    def render(self) -> str:
        width = max(len(r["quantity"]) for r in self.rows) + 2
        lines = [f"{'quantity'.ljust(width)}{'max abs':>11}{'max rel':>11}{'tol':>9}  ok   detail"]
        for r in self.rows:
            lines.append(
                f"{r['quantity'].ljust(width)}{r['max_abs']:11.2e}{r['max_rel']:11.2e}"
                f"{r['tol']:9.0e}  {'yes' if r['ok'] else 'NO '}  {r['detail']}"
            )
        return "\n".join(lines)


def _nchw(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def add_gradient_rows(
    table: Table,
    torch_grads: dict,
    jax_grads: dict,
    arch: str,
    tol: float,
    torch64: dict | None = None,
):
    """One row per parameter group (``hfpl_jax.models.param_label``): the worst tensor's error.

    With ``torch64`` (PyTorch's float64 gradients, ``--conditioning``) a tensor farther than
    ``tol`` from PyTorch's float32 result still passes when its own error against float64 is
    within ``max(tol, error of PyTorch float32 against float64)``: JAX is then at least as close
    to the exact gradient as the reference is (a ReLU input within a few float32 ulps of zero can
    land on either side in any float32 implementation, which moves every gradient below it)."""
    from hfpl_jax import models, weights

    groups: dict[str, list[tuple[str, float, float, bool]]] = {}
    for name, want in torch_grads.items():
        got = jax_grads[name]
        collection, path, _ = weights.torch_name_to_flax(name, want)
        label = models.param_label("/".join(path), arch)
        abs_err, rel_err = errors(got, want)
        ok = rel_err <= tol
        if not ok and torch64 is not None:
            exact = torch64[name]
            ok = errors(got, exact)[1] <= max(tol, errors(want, exact)[1])
        groups.setdefault(label, []).append((name, abs_err, rel_err, ok))
    for label in sorted(groups):
        entries = groups[label]
        worst = max(entries, key=lambda e: e[2])
        detail = f"worst {worst[0]}"
        conditioned = sum(1 for e in entries if e[3] and e[2] > tol)
        if conditioned:
            detail += f"; {conditioned} within float32 conditioning (vs torch fp64)"
        table.add(
            f"grad[{label}] ({len(entries)} tensors)",
            max(e[1] for e in entries),
            worst[2],
            tol,
            detail,
            ok=all(e[3] for e in entries),
        )


def add_conditioning_rows(table: Table, torch32: dict, jax32: dict, torch64: dict, arch: str):
    """Informational rows: each framework's float32 gradients against PyTorch in float64.

    Where the problem is ill-conditioned (e.g. batch statistics on tiny maps with random weights),
    PyTorch's own float32 result moves far from its float64 one; the port can only be expected to
    agree with PyTorch to about that distance."""
    for name, grads in (("torch fp32", torch32), ("jax fp32", jax32)):
        rows = Table()
        add_gradient_rows(rows, torch64, grads, arch, float("inf"))
        for row in rows.rows:
            table.add(f"{name} vs torch fp64: {row['quantity']}", row["max_abs"], row["max_rel"],
                      float("inf"), row["detail"])  # fmt: skip


def add_gradient_comparison(
    table: Table, options: CompareOptions, grads, torch_grads: dict, net, torch_side: Callable
) -> None:
    """Gradient rows of JAX's ``grads`` (a Flax tree) against ``torch_grads``; with
    ``--conditioning`` first ``torch_side(net in float64, np.float64)`` for the reference's
    float64 gradients, which the rows use (``add_gradient_rows``) and report
    (``add_conditioning_rows``)."""
    import jax

    from hfpl_jax import weights

    jax_grads = weights.to_torch({"params": jax.tree.map(np.asarray, grads)})
    grads64 = None
    if options.conditioning:
        _, grads64 = torch_side(copy.deepcopy(net).double(), np.float64)
    add_gradient_rows(table, torch_grads, jax_grads, options.arch, options.grad_tol, grads64)
    if grads64 is not None:
        add_conditioning_rows(table, torch_grads, jax_grads, grads64, options.arch)


def _flax_variables(state: dict, options: CompareOptions) -> dict:
    """``weights.from_torch`` as jax arrays; floating leaves in float64 with ``--float64`` (so the
    gradients, which JAX returns in the parameters' dtype, are not rounded to float32)."""
    import jax
    import jax.numpy as jnp

    from hfpl_jax import weights

    def convert(a):
        a = jnp.asarray(a)
        return a.astype(options.jnp_dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(convert, weights.from_torch(state, options.arch))


def _torch_param_grads(net) -> dict[str, np.ndarray]:
    return {n: p.grad.numpy().copy() for n, p in net.named_parameters() if p.grad is not None}


def load_weights(options: CompareOptions) -> dict[str, np.ndarray]:
    """Torch-named arrays for both frameworks: ``options.weights`` (any file
    ``weights.load_weights_file`` reads; the ImageNet ``.params`` holds the backbone only) over the
    tensors seeded from ``options.seed``."""
    from hfpl_jax import weights

    seeded = weights.seeded_state_dict(options.arch, options.seed, options.num_classes)
    if options.weights is None:
        return seeded
    if not os.path.isfile(options.weights):
        raise FileNotFoundError(f"--weights {options.weights!r} does not exist")
    loaded = weights.load_weights_file(options.weights, options.arch)
    merged, _ = weights.merge_variables(weights.from_torch(seeded, options.arch), loaded)
    return weights.to_torch(merged, options.arch)


# ------------------------------------------------------------------------------------------------
# Per-arch runs


def compare_seam(options: CompareOptions, net, state, table: Table) -> None:
    """SEAM: forward outputs in eval mode, every term of the reference's CAM training loss and
    its gradients (dropout off, the same ISL draws on both sides)."""
    import jax
    import jax.numpy as jnp
    import torch

    from hfpl_jax import models
    from hfpl_jax.image_ops import scaled_size
    from hfpl_jax.losses import importance_sampling_loss_from_indices
    from hfpl_jax.train.cam_loss import LossSettings, cam_loss_fn

    rng = np.random.default_rng(options.seed + 1)
    n, (h, w), k = options.batch, options.size, options.num_classes
    images = rng.standard_normal((n, h, w, 3)).astype(options.np_dtype)
    labels = (rng.random((n, k)) < 3.0 / k).astype(options.np_dtype)
    labels[np.arange(n), rng.integers(0, k, n)] = 1.0  # every image has a label
    model = models.build(
        options.arch, k, dropout=False, dtype=options.jnp_dtype, conv_impl=options.conv_impl
    )
    variables = _flax_variables(state, options)

    # Forward, eval mode.
    net.eval()
    with torch.no_grad():
        cam, cam_rv, logits = net(_nchw(images))
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(images))
    for name, value in (("cam", cam), ("cam_rv", cam_rv), ("logits", logits)):
        table.add(f"forward/{name}", *errors(out[name], _nhwc(value)), options.forward_tol,
                  str(tuple(out[name].shape)))  # fmt: skip

    # The full CAM loss and its gradients; dropout off, same ISL draws.
    hl, wl = out["logits"].shape[1:3]
    isl_indices = rng.integers(0, hl * wl, size=(n * k, options.num_samples)).astype(np.int64)

    def torch_side(net_, dtype):
        _disable_dropout(net_)
        net_.train()  # the reference's override: BN eval, conv1a/b2* and BN frozen
        for p in net_.parameters():
            p.requires_grad_(True)  # compare every gradient, frozen ones included
        net_.zero_grad()
        namespace = reference_cam_loss(
            options.reference, net_, _nchw(images.astype(dtype)),
            torch.from_numpy(labels.astype(dtype)), isl_indices, num_samples=options.num_samples,
        )  # fmt: skip
        namespace["loss"].backward()
        return namespace, _torch_param_grads(net_)

    namespace, torch_grads = torch_side(net, options.np_dtype)

    indices = jnp.asarray(isl_indices.reshape(n, k, options.num_samples).transpose(0, 2, 1))

    def isl_fn(key, logits_, labels_):
        return importance_sampling_loss_from_indices(logits_[..., 1:], labels_, indices)

    settings = LossSettings(isl_num_samples=options.num_samples)
    small = (scaled_size(h, 0.3), scaled_size(w, 0.3))
    loss_fn = jax.jit(jax.value_and_grad(
        lambda p: cam_loss_fn(p, variables["batch_stats"], jnp.asarray(images),
                              jnp.asarray(labels), jax.random.key(0), model=model,
                              settings=settings, isl_fn=isl_fn),
        has_aux=True,
    ))  # fmt: skip
    (_, terms), grads = loss_fn(variables["params"])
    pairs = {"loss": "loss", "loss_cls": "loss_cls", "loss_er": "loss_er",
             "loss_ecr": "loss_ecr", "loss_fsl": "loss_fs1"}  # fmt: skip
    for jax_name, torch_name in pairs.items():
        want = float(namespace[torch_name].item())
        table.add(f"loss/{jax_name}", *errors(terms[jax_name], want), options.forward_tol,
                  f"{want:.6g} (branch 2 at {small[0]}x{small[1]})")  # fmt: skip
    add_gradient_comparison(table, options, grads, torch_grads, net, torch_side)


def _linear_test_weights(shape, dtype=np.float32) -> np.ndarray:
    size = int(np.prod(shape))
    return np.cos(0.37 * np.arange(size, dtype=np.float64)).astype(dtype).reshape(shape)


def compare_affinity(options: CompareOptions, net, state, table: Table) -> None:
    """AffinityNet: the pair affinities and the gradients of ``sum(cos(0.37 i) * affinity)``."""
    import jax
    import jax.numpy as jnp
    import torch

    from hfpl_jax import models

    rng = np.random.default_rng(options.seed + 1)
    images = rng.standard_normal((options.batch, *options.size, 3)).astype(options.np_dtype)
    model = models.build(options.arch, 0, dtype=options.jnp_dtype, conv_impl=options.conv_impl)
    variables = _flax_variables(state, options)

    def torch_side(net_, dtype):
        net_.eval()
        for p in net_.parameters():
            p.requires_grad_(True)
        net_.zero_grad()
        aff = net_(_nchw(images.astype(dtype)))
        (aff * torch.from_numpy(_linear_test_weights(tuple(aff.shape), dtype))).sum().backward()
        return aff, _torch_param_grads(net_)

    aff, torch_grads = torch_side(net, options.np_dtype)
    weights_ = _linear_test_weights(tuple(aff.shape), options.np_dtype)

    def loss(params):
        out = model.apply({**variables, "params": params}, jnp.asarray(images), train=False)
        return jnp.sum(out["affinity"] * weights_), out

    grads, out = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    table.add("forward/affinity", *errors(out["affinity"], aff.detach().numpy()),
              options.forward_tol, str(tuple(aff.shape)))  # fmt: skip
    add_gradient_comparison(table, options, grads, torch_grads, net, torch_side)


def compare_deeplab(options: CompareOptions, net, state, table: Table) -> None:
    """DeepLab-LargeFOV: logits in eval mode and with batch statistics, and the gradients of the
    pixel-wise cross entropy against fixed random targets (dropout off)."""
    import jax
    import jax.numpy as jnp
    import torch
    import torch.nn.functional as F

    from hfpl_jax import models

    rng = np.random.default_rng(options.seed + 1)
    n, (h, w), k = max(options.batch, 2), options.size, options.num_classes
    images = rng.standard_normal((n, h, w, 3)).astype(options.np_dtype)
    targets = rng.integers(0, k + 1, size=(n, h, w))
    model = models.build(
        options.arch, k, dropout=False, dtype=options.jnp_dtype, conv_impl=options.conv_impl
    )
    variables = _flax_variables(state, options)
    net.eval()
    with torch.no_grad():
        logits_eval = net(_nchw(images))
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(images))
    table.add("forward/logits (eval)", *errors(out["logits"], _nhwc(logits_eval)),
              options.forward_tol, str(tuple(out["logits"].shape)))  # fmt: skip

    def torch_side(net_, dtype):
        _disable_dropout(net_)
        _set_training_flags(net_, True)  # the final stage: BN with batch statistics
        for p in net_.parameters():
            p.requires_grad_(True)  # net.eval() ran the backbone's Net.train(False): it froze some
        net_.zero_grad()
        logits_ = net_(_nchw(images.astype(dtype)))
        F.cross_entropy(logits_, torch.from_numpy(targets)).backward()
        return logits_, _torch_param_grads(net_)

    reference_state = copy.deepcopy(net.state_dict())  # before the batch-statistics update
    logits, torch_grads = torch_side(net, options.np_dtype)

    def loss(params):
        out, _ = model.apply({**variables, "params": params}, jnp.asarray(images), train=True,
                             mutable=["batch_stats"])  # fmt: skip
        log_p = jax.nn.log_softmax(out["logits"], axis=-1)
        nll = -jnp.take_along_axis(log_p, jnp.asarray(targets)[..., None], axis=-1)
        return jnp.mean(nll), out

    grads, out = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    table.add("forward/logits (batch stats)", *errors(out["logits"], _nhwc(logits)),
              options.forward_tol, str(tuple(out["logits"].shape)))  # fmt: skip
    net.load_state_dict(reference_state)  # the float64 run starts from the same statistics
    add_gradient_comparison(table, options, grads, torch_grads, net, torch_side)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """How ``compare-torch`` checks one arch: ``build_reference(num_classes)`` -> the reference's
    torch module (the checkout imported); ``run(options, net, state, table)`` adds the rows."""

    build_reference: Callable[[int], object]
    run: Callable[[CompareOptions, object, dict, Table], None]


# The registry: one Comparison per arch whose reference module exists (hfpl_jax.models.SPECS has
# the same names; resnet50_cam has no counterpart in the reference).
COMPARISONS: dict[str, Comparison] = {
    "seam": Comparison(build_seam, compare_seam),
    "affinity": Comparison(build_affinity, compare_affinity),
    "deeplab_largefov": Comparison(build_deeplab_largefov, compare_deeplab),
}
ARCHS = tuple(COMPARISONS)


def compare(options: CompareOptions) -> Table:
    """Run ``options.arch``'s comparison and return the table (``Table.ok``: every row passed).

    Sets JAX's process-wide ``jax_default_matmul_precision`` to "highest" (and ``jax_enable_x64``
    with ``options.float64``), seeds torch with ``options.seed`` and imports the reference.
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    if options.float64:
        jax.config.update("jax_enable_x64", True)
    import torch

    torch.manual_seed(options.seed)
    import_reference(options.reference)
    comparison = COMPARISONS[options.arch]
    net = comparison.build_reference(options.num_classes)
    state = load_weights(options)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    if options.float64:
        net.double()
    table = Table()
    comparison.run(options, net, state, table)
    return table


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--size: expected H or HxW, found {text!r}") from e
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 16:
        raise argparse.ArgumentTypeError(f"--size: expected H or HxW >= 16, found {text!r}")
    return values


def parse_options(argv: list[str] | None = None) -> CompareOptions:
    """The ``compare-torch`` command line -> ``CompareOptions`` (exits 2 on a bad flag)."""
    parser = argparse.ArgumentParser(
        prog="hfpl-jax compare-torch",
        description="Compare hfpl-jax with the official PyTorch code on identical weights/inputs.",
    )
    parser.add_argument("--reference", required=True, help="checkout of the official HFPL code")
    parser.add_argument("--arch", default="seam", choices=ARCHS)
    parser.add_argument("--weights", default=None, help="reference checkpoint (.pth) or the "
                        "ImageNet .params (heads seeded); default: all seeded")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, inputs, labels")
    parser.add_argument("--num-classes", type=int, default=20, help="foreground classes")
    parser.add_argument("--size", type=_size, default=(64, 64), help="input H or HxW (>= 16)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=10, help="ISL draws per class")
    parser.add_argument("--forward-tol", type=float, default=1e-4)
    parser.add_argument("--grad-tol", type=float, default=1e-3)
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    parser.add_argument(
        "--conv-impl",
        default="auto",
        choices=CONV_IMPLS,
        help="how the Flax models compute convolutions (hfpl_jax.models.build's conv_impl)",
    )
    parser.add_argument(
        "--conditioning",
        action="store_true",
        help="also run the reference in float64 and report both frameworks' float32 gradient "
        "errors against it (how far float32 itself is from the exact result); a gradient at least "
        "as close to it as the reference's float32 one passes",
    )
    parser.add_argument(
        "--float64",
        action="store_true",
        help="run both frameworks in float64: separates implementation differences from float32 "
        "rounding amplified by ill-conditioned layers (e.g. batch statistics on tiny maps)",
    )
    args = parser.parse_args(argv)
    try:
        return CompareOptions(**{f.name: getattr(args, f.name)
                                 for f in dataclasses.fields(CompareOptions)})  # fmt: skip
    except ValueError as e:
        parser.error(str(e))


def main(argv: list[str] | None = None) -> int:
    """``hfpl-jax compare-torch --reference PATH [--arch seam] [--weights F] ...``: prints the
    table, writes it as JSON with ``--json``; exit status 0 when every row passes, else 1."""
    options = parse_options(argv)
    table = compare(options)
    import jax
    import torch

    print(f"hfpl-jax vs reference {os.path.abspath(options.reference)}: arch {options.arch}, "
          f"input {options.batch}x{options.size[0]}x{options.size[1]}, weights "
          f"{options.weights or f'seeded ({options.seed})'}, torch {torch.__version__}, "
          f"jax {jax.__version__}, {'float64' if options.float64 else 'float32'}, matmul "
          f"precision highest, conv_impl {options.conv_impl}")  # fmt: skip
    print("relative error = max|jax - torch| / max|torch| per array (worst tensor per group)")
    print(table.render())
    if options.json:
        atomic_io.write_json(
            options.json, {"arch": options.arch, "ok": table.ok, "rows": table.rows}
        )
    print("PASS" if table.ok else "FAIL: an error exceeds its tolerance")
    return 0 if table.ok else 1


if __name__ == "__main__":
    sys.exit(main())
