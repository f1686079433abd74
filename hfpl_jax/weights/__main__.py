"""``python -m hfpl_jax.weights``: the same as ``hfpl-jax convert-weights``."""

import sys

from hfpl_jax.weights.cli import convert_weights_main

sys.exit(convert_weights_main())
