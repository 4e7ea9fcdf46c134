"""Sky background estimation and subtraction with sep (SExtractor's mesh algorithm)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep


@dataclass
class BackgroundResult:
    """A sky model of one CCD.

    Attributes
    ----------
    model : sep.Background
        The mesh model; :meth:`subtract` removes it, :attr:`level` evaluates it.
    global_level : float
        Mean of the mesh sky levels (the CCD's sky level).
    global_rms : float
        Mean of the mesh sky noise (the CCD's sky noise per pixel).
    """

    model: object
    global_level: float
    global_rms: float

    @property
    def level(self) -> np.ndarray:
        """Sky level per pixel (image units), the mesh background interpolated."""
        return self.model.back()

    def subtract(self, image: np.ndarray, bad: np.ndarray | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
        """``image - sky`` as a float32 array, ``bad`` pixels set to 0.

        sep subtracts row by row in place, without building the full sky map. ``out``
        (C-contiguous float32 of the image's shape) is reused instead of a new array: a
        fresh CCD-sized array costs thousands of page faults.
        """
        if out is None:
            data = np.array(image, dtype=np.float32, order="C", copy=True)
        else:
            data = out
            np.copyto(data, image, casting="same_kind")
        self.model.subfrom(data)
        if bad is not None:
            data[bad] = 0
        return data


def estimate_background(image: np.ndarray, bad: np.ndarray, box: int = 64,
                        filter_size: int = 3) -> BackgroundResult:
    """Estimate the sky of ``image`` ignoring the ``bad`` pixels.

    Parameters
    ----------
    image : ndarray (ny, nx)
        Image with bad pixels set to any finite value.
    bad : ndarray of bool
        Pixels not to use (no data, bad columns, and for a second pass the sources).
    box : int
        Mesh box size in pixels (clipped to the image size so small CCDs get one box).
    filter_size : int
        Median filter size over the mesh (in boxes).

    Returns
    -------
    BackgroundResult
    """
    data = np.ascontiguousarray(image, dtype=np.float32)
    ny, nx = data.shape
    bad = np.ascontiguousarray(bad)
    mask = bad.view(np.uint8) if bad.dtype == bool else bad.astype(np.uint8)
    bkg = sep.Background(data, mask=mask,
                         bw=min(box, nx), bh=min(box, ny), fw=filter_size, fh=filter_size)
    return BackgroundResult(model=bkg, global_level=float(bkg.globalback),
                            global_rms=float(bkg.globalrms))


def source_mask(segmap: np.ndarray, objects, bad: np.ndarray, scale: float = 4.0,
                min_sky_fraction: float = 0.5) -> np.ndarray:
    """Pixels to leave out of a second sky pass: ``bad`` plus the detected sources.

    The footprints of the first detection pass (segmentation map) and ellipses of
    ``scale`` times each source's isophotal a, b (sep.mask_ellipse) hide the sources'
    wings, which otherwise bias the mesh sky high (and aperture fluxes low) in crowded
    fields. While that leaves less than ``min_sky_fraction`` of the good pixels (sep
    gives up on meshes that are mostly masked) the ellipses shrink to half, then to the
    footprints alone; failing that, only ``bad`` is returned.
    """
    seg = segmap > 0
    need = min_sky_fraction * (~bad).sum()
    for r in (scale, scale / 2, 0.0):  # shrink the ellipses on small or crowded CCDs
        src = seg.copy()
        if r > 0 and len(objects):
            sep.mask_ellipse(src, objects["x"], objects["y"], objects["a"], objects["b"],
                             objects["theta"], r=r)
        both = bad | src
        if (~both).sum() >= need:
            return both
    return bad
