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
                   clean: bool = True, pixstack: int = 3_000_000) -> np.ndarray:
    """Detect sources in a background-subtracted image.

    Parameters
    ----------
    data : ndarray
        Background-subtracted image (bad pixels set to 0).
    variance : ndarray
        Per-pixel variance (finite everywhere; bad pixels are masked anyway).
    bad : ndarray of bool
        Pixels excluded from detection.
    threshold : float
        Detection threshold in sigma of the (filtered) per-pixel noise.
    min_area : int
        Minimum number of connected pixels above threshold.
    deblend_nthresh, deblend_cont : int, float
        sep's (SExtractor's DEBLEND_NTHRESH, DEBLEND_MINCONT) multi-threshold deblending.
    clean : bool
        Remove spurious detections in the wings of bright sources.
    pixstack : int
        sep's pixel buffer (large CCDs with many sources need more than the default).

    Returns
    -------
    objects : ndarray
        sep's structured object array (x, y, a, b, theta, flux, peak, npix, flag, ...).
    segmap : ndarray of int32
        Segmentation map: pixel value ``i + 1`` belongs to object ``i``, 0 to none.
    """
    sep.set_extract_pixstack(max(pixstack, data.size))
    sep.set_sub_object_limit(4096)
    return sep.extract(np.ascontiguousarray(data, dtype=np.float32), threshold,
                       var=np.ascontiguousarray(variance, dtype=np.float32),
                       mask=np.ascontiguousarray(bad, dtype=np.uint8),
                       minarea=min_area, deblend_nthresh=deblend_nthresh,
                       deblend_cont=deblend_cont, clean=clean,
                       segmentation_map=True)
