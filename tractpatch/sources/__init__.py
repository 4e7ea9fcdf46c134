"""Per-CCD source detection and measurement."""
