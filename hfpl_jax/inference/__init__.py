"""Multi-scale CAM inference, dense CRF and random-walk propagation (later issues)."""
