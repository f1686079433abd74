"""Config-driven training loops.

``optimizers`` (regex parameter groups, the poly schedule, PyTorch-exact SGD), ``train_state``
(the pytree a jitted update carries), ``cam_config`` (the CAM config schema and the reference's
defaults), ``cam`` (the SEAM + HFPL loss, the sharded update, the loop and
``hfpl-jax train-cam``) and ``observability`` (TensorBoard, metrics.jsonl, progress bar, CAM
overlays).
"""
