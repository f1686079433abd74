"""mIoU with background-threshold sweep and contour F-score (later issues)."""
