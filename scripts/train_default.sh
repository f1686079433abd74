#!/usr/bin/env bash
# The default job from a fresh clone: CAM training (SEAM + HFPL: every loss of the reference) on the
# generated hfpl_shapes dataset, on CPU. Makes (or reuses) .venv, installs hfpl-jax with the `build`
# extra (TensorFlow writes the generated dataset once), builds the dataset on first use, trains, and
# says where the checkpoints and the TensorBoard logs are. Rerunning resumes from the last checkpoint.
#
#   ./scripts/train_default.sh [--config.KEY=VALUE ...]
#
# Environment: WORKDIR (default workdirs/cam_shapes), TFDS_DATA_DIR (default ~/tensorflow_datasets),
# PYTHON (the interpreter that makes .venv, default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORKDIR=${WORKDIR:-workdirs/cam_shapes}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[build]'
.venv/bin/hfpl-jax train-cam --config=configs/cam_shapes_seam_hfpl.py --workdir="$WORKDIR" "$@"
cat <<MSG

Done. Checkpoints:  $WORKDIR/checkpoints   (hfpl_jax.checkpoint.load_params("$WORKDIR"))
      TensorBoard:  $WORKDIR/tensorboard   (view: pip install tensorboard; tensorboard --logdir $WORKDIR)
      Metrics log:  $WORKDIR/metrics.jsonl
MSG
