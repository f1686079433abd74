"""A training stage's model and its first state, from the config fields every stage shares.

Every stage's config has ``config.seed``, ``config.input.crop_size`` and ``config.model`` with
``arch``, ``width``, ``blocks``, ``batch_norm``, ``dropout``, ``conv_init``, ``compute_dtype`` and
``init_weights`` (see ``hfpl_jax.train.cam_config``). From them:

* :func:`build_model`: the Flax module (``hfpl_jax.models.build``), its options checked by name.
* :func:`init_variables`: random ``{"params", "batch_stats"}`` from the seed, on a
  ``(1, crop, crop, 3)`` input; :func:`abstract_variables`: their shapes, without allocating.
* :func:`init_train_state`: those variables with ``model.init_weights`` (ImageNet weights) loaded
  over them, the optimizer state and the step/key, replicated on the mesh;
  :func:`abstract_train_state` and :func:`abstract_checkpoint_items` are the restore targets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfpl_jax import parallel
from hfpl_jax.train.train_state import TrainState, base_key_data, checkpoint_items

__all__ = [
    "abstract_checkpoint_items",
    "abstract_train_state",
    "abstract_variables",
    "build_model",
    "init_train_state",
    "init_variables",
    "load_init_weights",
]

logger = logging.getLogger(__name__)


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """``hfpl_jax.models.build_from_config(config.model, num_classes)``.

    Raises:
      ValueError: ``model.arch``, ``model.batch_norm``, ``model.conv_init`` or
        ``model.compute_dtype`` is not one of its allowed values (the message names the key).
    """
    from hfpl_jax import models  # noqa: PLC0415

    return models.build_from_config(config.model, num_classes)


def load_init_weights(path: str, arch: str, variables: dict) -> dict:
    """ImageNet (or any saved) weights merged into ``variables`` (``hfpl_jax.weights``).

    ``.params``: the reference's MXNet ResNet-38 file; ``.npz``: saved Flax variables; otherwise a
    PyTorch state dict. Layers absent from the file (the heads) keep their random initialisation,
    as in the reference (``load_state_dict(strict=False)``), but a tensor of the file that the
    model lacks, or of the wrong shape, is an error.

    Raises:
      FileNotFoundError: ``path`` does not exist (named as ``model.init_weights``).
    """
    from hfpl_jax import weights  # noqa: PLC0415

    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.init_weights: {path!r} does not exist.")
    merged, count = weights.load_pretrained(variables, path, arch)
    logger.info("initialised %d tensors from %s", count, path)
    return merged


def _init_fn(model: Any, crop: int) -> Callable[[jax.Array], dict]:
    def init(key_data):
        params_key, dropout_key = jax.random.split(jax.random.wrap_key_data(key_data))
        return dict(
            model.init(
                {"params": params_key, "dropout": dropout_key},
                jnp.zeros((1, crop, crop, 3), jnp.float32),
            )
        )

    return init


def _init_key_data(seed: int) -> jax.Array:
    # A key of its own, derived from the seed, so model initialisation never shares a stream with
    # the per-step keys fold_in(key(seed), step).
    return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 0x1417))


def init_variables(
    model: Any, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None
) -> dict:
    """Random initial ``{"params", "batch_stats"}`` from ``config.seed`` (replicated on ``mesh``).

    The seed is an argument of the jitted initialiser, so every seed reuses one compilation.
    """
    shardings = None if mesh is None else parallel.replicated_sharding(mesh)
    init = jax.jit(_init_fn(model, config.input.crop_size), out_shardings=shardings)
    return init(_init_key_data(config.seed))


def abstract_variables(model: Any, config: ml_collections.ConfigDict) -> dict:
    """Shapes and dtypes of the variables (``jax.ShapeDtypeStruct``), without allocating."""
    return jax.eval_shape(_init_fn(model, config.input.crop_size), _init_key_data(config.seed))


def abstract_train_state(model: Any, tx: Any, config: ml_collections.ConfigDict) -> TrainState:
    """The state's shapes and dtypes (``jax.ShapeDtypeStruct``), computed without allocating."""
    init = _init_fn(model, config.input.crop_size)

    def make(key_data):
        variables = init(key_data)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(variables["params"]),
            rng=base_key_data(config.seed),
        )

    return jax.eval_shape(make, _init_key_data(config.seed))


def init_train_state(
    model: Any,
    tx: Any,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
) -> TrainState:
    """A fresh state replicated on ``mesh``: model init from ``config.seed``, then (when
    ``config.model.init_weights`` is set) the ImageNet weights loaded over it."""
    replicated = parallel.replicated_sharding(mesh)
    variables = init_variables(model, config, mesh)
    if config.model.init_weights:
        host_variables = jax.tree.map(np.asarray, jax.device_get(variables))
        loaded = load_init_weights(config.model.init_weights, config.model.arch, host_variables)
        variables = parallel.replicate(loaded, mesh)
    params = variables["params"]
    opt_state = jax.jit(tx.init, out_shardings=replicated)(params)
    return TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), replicated),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=opt_state,
        rng=jax.device_put(base_key_data(config.seed), replicated),
    )


def abstract_checkpoint_items(state: TrainState, mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """Shape/dtype/sharding targets for restoring onto ``mesh`` (any device count)."""
    replicated = parallel.replicated_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        checkpoint_items(state),
    )
