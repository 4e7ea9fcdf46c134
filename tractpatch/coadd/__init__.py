"""Warping kernels, stacking statistics and the per-patch coadd driver."""
