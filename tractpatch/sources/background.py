"""Sky background estimation and subtraction with sep (SExtractor's mesh algorithm)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep
from scipy.ndimage import binary_dilation, gaussian_filter


@dataclass
class BackgroundResult:
    """A sky model of one CCD.

    Attributes
    ----------
    level : ndarray
        Sky level per pixel (image units), the mesh background interpolated.
    rms : ndarray
        Sky noise per pixel from the mesh (image units).
    global_level : float
        Mean of the mesh sky levels (the CCD's sky level).
    global_rms : float
        Mean of the mesh sky noise (the CCD's sky noise per pixel).
    """

    level: np.ndarray
    rms: np.ndarray
    global_level: float
    global_rms: float


def estimate_background(image: np.ndarray, bad: np.ndarray, box: int = 64,
                        filter_size: int = 3, source_mask_sigma: float | None = 5.0,
                        source_mask_grow: int = 3) -> BackgroundResult:
    """Estimate the sky of ``image`` ignoring the ``bad`` pixels.

    Parameters
    ----------
    image : ndarray (ny, nx)
        Image with bad pixels set to any finite value.
    bad : ndarray of bool
        Pixels not to use (no data, bad columns...).
    box : int
        Mesh box size in pixels (clipped to the image size so small CCDs get one box).
    filter_size : int
        Median filter size over the mesh (in boxes).
    source_mask_sigma : float or None
        When set, a second pass masks pixels more than this many sigma above the
        first-pass sky (grown by ``source_mask_grow`` pixels): the wings of sources
        otherwise bias the mesh sky high, and aperture fluxes low, in crowded fields.
    source_mask_grow : int
        Dilation (pixels) of the source mask.

    Returns
    -------
    BackgroundResult
    """
    data = np.ascontiguousarray(image, dtype=np.float32)
    ny, nx = data.shape
    bw, bh = min(box, nx), min(box, ny)
    bkg = sep.Background(data, mask=np.ascontiguousarray(bad, dtype=np.uint8), bw=bw,
                         bh=bh, fw=filter_size, fh=filter_size)
    if source_mask_sigma:
        # threshold the residual smoothed by a unit Gaussian (noise / 2 sqrt(pi)) so
        # that single noise pixels do not mask the whole image
        resid = gaussian_filter(np.where(bad, 0.0, data - bkg.back()), 1.0)
        high = resid > source_mask_sigma * bkg.rms() / (2 * np.sqrt(np.pi))
        high = binary_dilation(high & ~bad, iterations=source_mask_grow)
        both = bad | high
        if (~both).sum() > 0.2 * (~bad).sum():  # keep enough sky to estimate
            bkg = sep.Background(data, mask=np.ascontiguousarray(both, dtype=np.uint8),
                                 bw=bw, bh=bh, fw=filter_size, fh=filter_size)
    return BackgroundResult(level=bkg.back(), rms=bkg.rms(),
                            global_level=float(bkg.globalback),
                            global_rms=float(bkg.globalrms))
