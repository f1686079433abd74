"""Optimizers: regex parameter groups, the poly schedule and PyTorch-exact SGD, as optax transforms.

The CAM and AffinityNet stages of the reference train with ``tool/torchutils.PolyOptimizer``, a
``torch.optim.SGD`` subclass (spec §1.9). Its behaviour, reproduced here:

* **Groups.** Each parameter gets a learning-rate multiplier and a weight-decay multiplier from the
  first matching regex of ``lr_mults`` / ``wd_mults`` (matched with ``re.search`` against the
  parameter path ``"b4_3/conv_branch2a/kernel"``; no match means 1). Parameters matching a
  ``frozen`` regex get **neither an update nor weight decay** (in PyTorch they have
  ``requires_grad=False``, so SGD skips them entirely).
* **Poly schedule.** ``lr_t = lr_group · (1 − t/max_step)^power`` for ``t < max_step`` with
  ``t`` the 0-based global step (step 0 uses the full rate); from ``max_step`` on, PolyOptimizer
  stops updating the rate, so it stays at its ``t = max_step − 1`` value.
* **SGD (PyTorch semantics, no dampening, no Nesterov).** ``d = g + wd·p``; ``v ← m·v + d``
  (``v₀ = d``); ``p ← p − lr_t·v``.
* **The momentum quirk** (``reference_momentum_bug=True``): ``PolyOptimizer`` passes its weight
  decay positionally into SGD's *momentum* slot, so the momentum of every group is the weight-decay
  value (5e-4), and the constructor's ``momentum=0.9`` only serves as the poly power. With the flag
  off, the momentum is ``optim.momentum`` (a real 0.9).

Learning rates are evaluated like PyTorch does: in float64 on the host (``initial_lr · mult``), and
rounded to float32 once when applied. For ``max_step <= _MAX_TABLE_STEPS`` the per-group float64
values are precomputed into a float32 table indexed by the step inside ``jit`` (bit-exact with the
reference); longer schedules are evaluated in float32 inside ``jit``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

_MAX_TABLE_STEPS = 1 << 20


def param_path(path: tuple[Any, ...]) -> str:
    """``jax.tree_util`` key path -> ``"a/b/kernel"``."""
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        else:
            parts.append(str(entry))
    return "/".join(parts)


def flatten_param_paths(params: Any) -> dict[str, Any]:
    """Nested params -> ``{"a/b/kernel": leaf}`` in tree order."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {param_path(path): leaf for path, leaf in leaves}


def _compile_rules(rules: Sequence[Any], name: str, with_value: bool) -> list:
    compiled = []
    for index, rule in enumerate(rules or ()):
        if with_value:
            if not isinstance(rule, (tuple, list)) or len(rule) != 2:
                raise ValueError(
                    f"{name}[{index}] must be a (regex, multiplier) pair, found {rule!r}."
                )
            pattern, value = rule
        else:
            pattern, value = rule, None
        if not isinstance(pattern, str):
            raise ValueError(f"{name}[{index}] must be a regex string, found {pattern!r}.")
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"{name}[{index}]: invalid regex {pattern!r}: {error}.") from None
        if with_value:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{name}[{index}]: multiplier must be a number, found {value!r}."
                ) from None
        compiled.append((regex, value))
    return compiled


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """One optimizer group: every parameter sharing (lr multiplier, wd multiplier, frozen)."""

    lr_mult: float
    wd_mult: float
    frozen: bool
    paths: tuple[str, ...]

    @property
    def label(self) -> str:
        if self.frozen:
            return "frozen"
        return f"lr_x{self.lr_mult:g}_wd_x{self.wd_mult:g}"


def param_groups(
    params: Any,
    *,
    lr_mults: Sequence[tuple[str, float]] = (),
    wd_mults: Sequence[tuple[str, float]] = (),
    frozen: Sequence[str] = (),
) -> tuple[Any, list[ParamGroup]]:
    """Assigns every parameter to a group by regex.

    Args:
      params: nested dict of arrays.
      lr_mults: ``(regex, multiplier)``; the first regex found (``re.search``) in the path wins.
      wd_mults: ``(regex, multiplier)`` on the weight decay, same matching.
      frozen: regexes; a match freezes the parameter (no update, no decay).

    Returns:
      (labels, groups): a pytree like ``params`` holding each leaf's group label, and the groups.

    Raises:
      ValueError: a malformed rule (not a regex/number), naming the rule.
    """
    lr_rules = _compile_rules(lr_mults, "optim.lr_mults", True)
    wd_rules = _compile_rules(wd_mults, "optim.wd_mults", True)
    frozen_rules = _compile_rules(frozen, "optim.frozen", False)

    def first_match(rules, path, default):
        for regex, value in rules:
            if regex.search(path):
                return value
        return default

    groups: dict[tuple[float, float, bool], list[str]] = {}

    def assign(path, _):
        path = param_path(path)
        is_frozen = any(regex.search(path) for regex, _ in frozen_rules)
        key = (
            (0.0, 0.0, True)
            if is_frozen
            else (first_match(lr_rules, path, 1.0), first_match(wd_rules, path, 1.0), False)
        )
        groups.setdefault(key, []).append(path)
        return ParamGroup(*key, paths=()).label

    labels = jax.tree_util.tree_map_with_path(assign, params)
    group_list = [
        ParamGroup(lr, wd, is_frozen, tuple(paths)) for (lr, wd, is_frozen), paths in groups.items()
    ]
    return labels, group_list


def unmatched_rules(
    params: Any,
    *,
    lr_mults: Sequence[tuple[str, float]] = (),
    wd_mults: Sequence[tuple[str, float]] = (),
    frozen: Sequence[str] = (),
) -> list[str]:
    """The rule regexes that match no parameter path (worth a warning: probably a typo)."""
    paths = list(flatten_param_paths(params))
    missing = []
    for name, rules, with_value in (
        ("optim.lr_mults", lr_mults, True),
        ("optim.wd_mults", wd_mults, True),
        ("optim.frozen", frozen, False),
    ):
        for regex, _ in _compile_rules(rules, name, with_value):
            if not any(regex.search(path) for path in paths):
                missing.append(f"{name}: {regex.pattern!r}")
    return missing


def poly_learning_rate(step: int, base_lr: float, max_step: int, power: float) -> float:
    """Host-side float64 poly rate (PolyOptimizer): ``base·(1 − min(t, max−1)/max)^power``."""
    if max_step <= 0:
        raise ValueError(f"max_step must be positive, found {max_step}.")
    if step < 0:
        raise ValueError(f"step must be >= 0, found {step}.")
    t = min(step, max_step - 1)
    return base_lr * (1.0 - t / max_step) ** power


def make_schedule(
    base_lr: float, *, schedule: str, max_step: int, power: float = 0.9
) -> Callable[[jax.Array], jax.Array]:
    """A jit-friendly learning-rate function of the 0-based step.

    ``schedule="poly"``: ``base_lr·(1 − t/max_step)^power`` for ``t < max_step``, then constant at
    the last value (PyTorch's PolyOptimizer). ``schedule="constant"``: ``base_lr``.

    Raises:
      ValueError: unknown schedule or non-positive ``max_step``.
    """
    if schedule == "constant":
        value = np.float32(base_lr)
        return lambda step: jnp.asarray(value, jnp.float32)
    if schedule != "poly":
        raise ValueError(f"optim.schedule must be 'poly' or 'constant', found {schedule!r}.")
    if max_step <= 0:
        raise ValueError(f"the schedule needs max_step > 0, found {max_step}.")
    if max_step <= _MAX_TABLE_STEPS:
        table = np.asarray(
            [poly_learning_rate(t, base_lr, max_step, power) for t in range(max_step)], np.float32
        )

        def from_table(step):
            return jnp.asarray(table)[jnp.clip(step, 0, max_step - 1)]

        return from_table

    def computed(step):
        t = jnp.clip(step, 0, max_step - 1).astype(jnp.float32)
        return jnp.float32(base_lr) * (1.0 - t / jnp.float32(max_step)) ** jnp.float32(power)

    return computed


class TorchSGDState(NamedTuple):
    """Step count (0-based index of the next update) and momentum buffers (zeros when frozen)."""

    count: jax.Array
    momentum: Any


def torch_sgd(
    labels: Any,
    group_settings: Mapping[str, tuple[Callable[[jax.Array], jax.Array], float, bool]],
    *,
    momentum: float,
) -> optax.GradientTransformation:
    """PyTorch SGD with per-group learning-rate functions, weight decay and frozen parameters.

    For every trainable parameter p with gradient g, group rate ``lr_t`` and decay ``wd``:
    ``d = g + wd·p``, ``v ← momentum·v + d``, update ``−lr_t·v`` (apply it with
    ``optax.apply_updates``).
    Frozen parameters get a zero update and keep a zero buffer.

    Args:
      labels: pytree like the params with each leaf's group label.
      group_settings: label -> (lr function of the step, weight decay, frozen).
      momentum: the SGD momentum of every group.
    """
    for label in set(jax.tree_util.tree_leaves(labels)):
        if label not in group_settings:
            raise ValueError(f"no optimizer settings for parameter group {label!r}.")

    def init_fn(params):
        return TorchSGDState(
            count=jnp.zeros((), jnp.int32),
            momentum=jax.tree_util.tree_map(jnp.zeros_like, params),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("torch_sgd needs params (weight decay): call update(g, s, params).")
        step = state.count

        def leaf_update(label, grad, buffer, param):
            lr_fn, weight_decay, frozen = group_settings[label]
            if frozen:
                return jnp.zeros_like(grad), buffer
            direction = grad + weight_decay * param if weight_decay != 0.0 else grad
            new_buffer = direction + momentum * buffer if momentum != 0.0 else direction
            rate = lr_fn(step).astype(new_buffer.dtype)
            return -rate * new_buffer, new_buffer

        pairs = jax.tree_util.tree_map(leaf_update, labels, updates, state.momentum, params)
        is_pair = lambda x: isinstance(x, tuple) and len(x) == 2  # noqa: E731
        new_updates = jax.tree_util.tree_map(lambda pair: pair[0], pairs, is_leaf=is_pair)
        new_momentum = jax.tree_util.tree_map(lambda pair: pair[1], pairs, is_leaf=is_pair)
        return new_updates, TorchSGDState(count=step + 1, momentum=new_momentum)

    return optax.GradientTransformation(init_fn, update_fn)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """What the training loop needs: the transform, the base-rate function and the groups."""

    tx: optax.GradientTransformation
    learning_rate: Callable[[jax.Array], jax.Array]  # the lr x1 group's rate (what gets logged)
    groups: list[ParamGroup]
    momentum: float
    max_step: int


def make_optimizer(optim_config: Any, params: Any, *, max_step: int) -> Optimizer:
    """Builds the optimizer described by ``config.optim`` for ``params``.

    ``optim_config`` fields: ``name`` ("sgd"), ``lr``, ``momentum``, ``reference_momentum_bug``,
    ``weight_decay``, ``schedule`` ("poly"/"constant"), ``poly_power``, ``lr_mults``, ``wd_mults``,
    ``frozen``.

    Raises:
      ValueError: unknown optimizer name or schedule, malformed rules, ``max_step <= 0``.
    """
    name = optim_config.get("name", "sgd")
    if name != "sgd":
        raise ValueError(f"optim.name must be 'sgd', found {name!r}.")
    base_lr = float(optim_config.lr)
    weight_decay = float(optim_config.weight_decay)
    if not math.isfinite(base_lr) or base_lr < 0:
        raise ValueError(f"optim.lr must be a finite non-negative number, found {base_lr}.")
    momentum = weight_decay if optim_config.reference_momentum_bug else float(optim_config.momentum)
    labels, groups = param_groups(
        params,
        lr_mults=optim_config.lr_mults,
        wd_mults=optim_config.wd_mults,
        frozen=optim_config.frozen,
    )
    settings = {}
    for group in groups:
        lr_fn = make_schedule(
            base_lr * group.lr_mult,
            schedule=optim_config.schedule,
            max_step=max_step,
            power=float(optim_config.poly_power),
        )
        settings[group.label] = (lr_fn, weight_decay * group.wd_mult, group.frozen)
    base_rate = make_schedule(
        base_lr,
        schedule=optim_config.schedule,
        max_step=max_step,
        power=float(optim_config.poly_power),
    )
    tx = torch_sgd(labels, settings, momentum=momentum)
    return Optimizer(
        tx=tx, learning_rate=base_rate, groups=groups, momentum=momentum, max_step=max_step
    )


def describe_groups(groups: Sequence[ParamGroup], params: Any) -> str:
    """A human-readable group table (counts of tensors and scalars) for the start-up log."""
    sizes = {path: int(np.prod(leaf.shape)) for path, leaf in flatten_param_paths(params).items()}
    lines = []
    for group in sorted(groups, key=lambda g: (g.frozen, g.lr_mult, g.wd_mult)):
        count = sum(sizes[path] for path in group.paths)
        lines.append(
            f"  {group.label:<22} {len(group.paths):4d} tensors {count:>12,d} values"
            f"  e.g. {group.paths[0]}"
        )
    return "\n".join(lines)
