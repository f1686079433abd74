"""Multi-scale CAM inference, dense CRF and random-walk propagation (later issues)."""

from hfpl_jax.inference.crf import dense_crf

__all__ = ["dense_crf"]
