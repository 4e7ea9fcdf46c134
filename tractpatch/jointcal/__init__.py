"""Joint astrometric and photometric calibration (jointcal and the mosaic solver)."""
