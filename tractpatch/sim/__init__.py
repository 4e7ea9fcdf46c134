"""The survey simulator: HSC-like exposures with known truth."""
