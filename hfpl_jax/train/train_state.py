"""The training state: the one pytree a jitted update takes (donated) and returns.

``TrainState`` holds arrays only, so it can be donated, sharded and checkpointed as a unit; the
model and the optimizer transform are static and live in the closures of the jitted step.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """Arrays of a training run.

    Attributes:
      step: int32 scalar, updates done so far (the 0-based index of the next update).
      params: model parameters (float32, nested dict).
      batch_stats: BatchNorm running statistics (constant when BN is frozen, updated by each step
        with ``batch_norm="batch"``; what inference normalises with).
      opt_state: the optimizer's state.
      rng: the base key's raw data (uint32); step ``t`` uses ``fold_in(key, t)``, so the random
        stream of a resumed run is the uninterrupted run's.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array

    def key(self) -> jax.Array:
        """The base PRNG key (typed)."""
        return jax.random.wrap_key_data(self.rng)

    def step_key(self) -> jax.Array:
        """``fold_in(base key, step)``: this update's key."""
        return jax.random.fold_in(self.key(), self.step)


def base_key_data(seed: int) -> jax.Array:
    """Raw data of the run's base key (``jax.random.key(seed)``), as stored in the state."""
    return jax.random.key_data(jax.random.key(seed))


def checkpoint_items(state: TrainState) -> dict[str, Any]:
    """The state split into the checkpoint's array items."""
    return {
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "train_meta": {"step": state.step, "rng": state.rng},
    }


def from_checkpoint_items(items: dict[str, Any]) -> TrainState:
    """Inverse of :func:`checkpoint_items`."""
    return TrainState(
        step=jnp.asarray(items["train_meta"]["step"]),
        params=items["params"],
        batch_stats=items["batch_stats"],
        opt_state=items["opt_state"],
        rng=items["train_meta"]["rng"],
    )
