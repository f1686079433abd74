"""Config-driven training: one runner, one module per stage.

``runner`` (what every stage shares: restore-or-initialise, checkpoints, signals, the finite
check, logging, evaluation hooks, the command line; a stage is a ``runner.Stage``), ``cam`` (the
CAM stage, ``hfpl-jax train-cam``) with ``cam_loss`` (the SEAM + HFPL loss composition) and
``cam_config`` (its config schema and the reference's defaults), ``evaluators`` (evaluations
declared in ``config.evals``, registered by name), ``model_setup`` (the model and its first state
from ``config.model``), ``optimizers`` (regex parameter groups, the poly schedule, PyTorch-exact
SGD), ``train_state`` (the pytree a jitted update carries) and ``observability`` (TensorBoard,
metrics.jsonl, progress bar, CAM overlays).
"""
