"""Detection above a threshold in units of the per-pixel noise, with deblending (sep)."""
from __future__ import annotations

import numpy as np
import sep

#: sep's object flag for a source that was deblended from a blend.
SEP_BLENDED = sep.OBJ_MERGED
#: sep's flag for a source touching the image border.
SEP_TRUNCATED = sep.OBJ_TRUNC


def detect_sources(data: np.ndarray, variance: np.ndarray, bad: np.ndarray,
                   threshold: float = 5.0, min_area: int = 5,
                   deblend_nthresh: int = 32, deblend_cont: float = 0.005,
                   clean: bool = True, pixstack: int = 300_000,
                   filter_type: str = "conv") -> np.ndarray:
    """Detect sources in a background-subtracted image.

    Parameters
    ----------
    data : ndarray
        Background-subtracted image (bad pixels set to 0).
    variance : ndarray
        Per-pixel variance (finite everywhere; bad pixels are masked anyway).
    bad : ndarray of bool or uint8, or None
        Pixels excluded from detection (None: none; sep then skips the mask reads,
        a fifth of its time on a CCD).
    threshold : float
        Detection threshold in sigma of the (filtered) per-pixel noise.
    min_area : int
        Minimum number of connected pixels above threshold.
    deblend_nthresh, deblend_cont : int, float
        sep's (SExtractor's DEBLEND_NTHRESH, DEBLEND_MINCONT) multi-threshold deblending.
    clean : bool
        Remove spurious detections in the wings of bright sources.
    filter_type : {"conv", "matched"}
        sep's detection filter with the default 3x3 kernel: ``conv`` (SExtractor's
        convolution, the faster) or ``matched`` (noise-weighted matched filter: ~5%
        more faint detections on a variance map, about twice the time).
    pixstack : int
        sep's pixel buffer; raised tenfold and retried (up to the image size) when a
        crowded CCD overflows it (a larger buffer costs time on every call).

    Returns
    -------
    objects : ndarray
        sep's structured object array (x, y, a, b, theta, flux, peak, npix, flag, ...).
    segmap : ndarray of int32
        Segmentation map: pixel value ``i + 1`` belongs to object ``i``, 0 to none.
    """
    sep.set_sub_object_limit(4096)
    args = (np.ascontiguousarray(data, dtype=np.float32), threshold)
    kwargs = dict(var=np.ascontiguousarray(variance, dtype=np.float32),
                  mask=None if bad is None else np.ascontiguousarray(bad, dtype=np.uint8),
                  minarea=min_area,
                  deblend_nthresh=deblend_nthresh, deblend_cont=deblend_cont,
                  clean=clean, segmentation_map=True, filter_type=filter_type)
    size = int(pixstack)
    while True:
        sep.set_extract_pixstack(size)
        try:
            return sep.extract(*args, **kwargs)
        except Exception as exc:  # sep raises a plain Exception on buffer overflow
            if "pixel buffer full" not in str(exc) or size >= data.size:
                raise
            size = min(size * 10, data.size)
