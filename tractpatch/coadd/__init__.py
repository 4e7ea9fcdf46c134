"""Warping kernels, stacking statistics and the per-patch coadd driver.

- :func:`warp_exposure` — resample one CCD onto a grid (numba Lanczos2..5/bilinear with a
  coarse-grid transform, or reproject_exact/adaptive); :class:`Warp`.
- :func:`stack_arrays` — MEANCLIP / MEAN / MEDIAN of aligned inputs with mask thresholds.
- :func:`coadd_patch` — warp and stack a stream of calibrated CCDs onto one patch, in
  bands of rows so memory stays bounded; :class:`CoaddResult`.
- ``tractpatch.coadd.task.CoaddDriverTask`` and :class:`CoaddDriverConfig`: ``coaddDriver.py``;
  ``tractpatch.coadd.color`` (``makeColorImage.py``), ``tractpatch.coadd.cutout`` (``cutout.py``).
"""
from .assemble import CoaddResult, coadd_patch
from .config import CoaddDriverConfig
from .stack import StackResult, stack_arrays
from .warp import Warp, njy_to_coadd_scale, warp_exposure

__all__ = ["warp_exposure", "Warp", "njy_to_coadd_scale", "stack_arrays", "StackResult",
           "coadd_patch", "CoaddResult", "CoaddDriverConfig"]
