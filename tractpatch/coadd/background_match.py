"""Background matching of overlapping CALEXPs (Montage ``mBgModel`` with constant offsets).

Subtracting each CCD's own sky (sep mesh) removes extended emission larger than the mesh;
subtracting nothing leaves steps where exposures with different sky levels meet. Matching
instead measures, for every overlapping pair of CCDs, the robust median of their difference
on a common coarse grid, and solves for one constant per CCD by weighted least squares::

    o_i - o_j = d_ij = median(I_i - I_j over the overlap),  weight sqrt(n_ij)

The absolute level is not constrained by differences: the offsets of each connected group
of overlapping CCDs are fixed to mean 0, so the matched set keeps the mean sky level of its
inputs (extended emission and the common sky are both preserved; only the steps go).
Corrected CCD = CALEXP - offset.

The coarse grid is the tract grid binned by ``bin_size``: each CALEXP is first block-
medianed (``bin_size`` x ``bin_size``, masked pixels ignored, so stars barely count), then
interpolated bilinearly (``scipy.ndimage.map_coordinates``) at the binned tract pixel
centres through the exact pixel->sky->pixel map. Pair differences are sigma-clipped.
Memory: one binned footprint per CCD (a 2k x 4k CCD at bin 8 is 0.5 MB).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.wcs import WCS
from scipy import sparse
from scipy.ndimage import map_coordinates
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import lsqr

from ..image import Exposure


@dataclass
class BinnedFootprint:
    """One CCD's block-medianed image resampled onto the binned grid (NaN off the CCD)."""

    key: tuple[int, int]
    x0: int
    y0: int
    data: np.ndarray

    @property
    def box(self) -> tuple[int, int, int, int]:
        ny, nx = self.data.shape
        return self.x0, self.y0, self.x0 + nx, self.y0 + ny


@dataclass
class PairDifference:
    """Robust median difference ``I_a - I_b`` over ``npix`` overlapping binned pixels."""

    a: tuple[int, int]
    b: tuple[int, int]
    median: float
    npix: int


@dataclass
class MatchResult:
    """Offsets (to subtract, CALEXP units) per (visit, ccd) and the pairs they fit."""

    offsets: dict = field(default_factory=dict)
    pairs: list = field(default_factory=list)
    rms_residual: float = 0.0  # weighted rms of (o_a - o_b - d_ab) over the pairs


def block_median(image: np.ndarray, bad: np.ndarray, bin_size: int) -> np.ndarray:
    """``bin_size`` x ``bin_size`` nanmedian of ``image`` with ``bad`` pixels ignored
    (trailing rows/columns that do not fill a block are dropped); NaN where no pixel is
    good."""
    ny, nx = (s // bin_size for s in image.shape)
    img = np.where(bad, np.nan, image.astype(np.float32))[:ny * bin_size, :nx * bin_size]
    blocks = img.reshape(ny, bin_size, nx, bin_size).transpose(0, 2, 1, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks -> NaN
        return np.nanmedian(blocks.reshape(ny, nx, -1), axis=2)


def bin_onto_grid(exposure: Exposure, key, grid_wcs: WCS, grid_box, bin_size: int,
                  bad_bits: int = 0) -> BinnedFootprint | None:
    """Resample one CALEXP onto the grid ``grid_wcs`` (full resolution, pixels
    ``grid_box`` = (x0, y0, x1, y1)) binned by ``bin_size``; None when off the grid."""
    ny, nx = exposure.image.shape
    bad = ~np.isfinite(exposure.image)
    if exposure.mask is not None and bad_bits:
        bad |= (exposure.mask & bad_bits) != 0
    small = block_median(exposure.image, bad, bin_size)
    gx0, gy0, gx1, gy1 = grid_box
    gnx, gny = (gx1 - gx0) // bin_size, (gy1 - gy0) // bin_size
    # footprint on the binned grid from points along the CCD edges
    t = np.linspace(0, 1, 9)
    ex = np.concatenate([t * (nx - 1), np.full(9, nx - 1.0), t * (nx - 1), np.zeros(9)])
    ey = np.concatenate([np.zeros(9), t * (ny - 1), np.full(9, ny - 1.0), t * (ny - 1)])
    gx, gy = grid_wcs.world_to_pixel_values(*exposure.wcs.pixel_to_world_values(ex, ey))
    bx = (np.asarray(gx) - gx0) / bin_size
    by = (np.asarray(gy) - gy0) / bin_size
    if not (np.all(np.isfinite(bx)) and np.all(np.isfinite(by))):
        return None
    x0, x1 = max(int(np.floor(bx.min())), 0), min(int(np.ceil(bx.max())) + 1, gnx)
    y0, y1 = max(int(np.floor(by.min())), 0), min(int(np.ceil(by.max())) + 1, gny)
    if x1 <= x0 or y1 <= y0:
        return None
    # binned grid pixel centres -> full-res grid pixels -> sky -> CCD pixels -> CCD bins
    yy, xx = np.mgrid[y0:y1, x0:x1]
    fx = gx0 + xx * bin_size + (bin_size - 1) / 2.0
    fy = gy0 + yy * bin_size + (bin_size - 1) / 2.0
    cx, cy = exposure.wcs.world_to_pixel_values(*grid_wcs.pixel_to_world_values(fx, fy))
    sx = (np.asarray(cx) - (bin_size - 1) / 2.0) / bin_size
    sy = (np.asarray(cy) - (bin_size - 1) / 2.0) / bin_size
    # bilinear; a NaN neighbour (masked block, outside) makes the sample NaN
    out = map_coordinates(small, [sy, sx], order=1, mode="constant", cval=np.nan)
    outside = (sx < 0) | (sy < 0) | (sx > small.shape[1] - 1) | (sy > small.shape[0] - 1)
    out[outside] = np.nan
    if not np.isfinite(out).any():
        return None
    return BinnedFootprint(key, x0, y0, out.astype(np.float32))


def pair_differences(foots: list[BinnedFootprint], min_pixels: int = 10,
                     sigma: float = 3.0) -> list[PairDifference]:
    """Sigma-clipped median of ``a - b`` for every pair of footprints that share at least
    ``min_pixels`` finite binned pixels."""
    boxes = np.array([f.box for f in foots], dtype=np.int64).reshape(-1, 4)
    pairs = []
    for i, fa in enumerate(foots):
        # vectorised box test against the later footprints; pixels only for the hits
        b = boxes[i + 1:]
        hit = ((b[:, 0] < boxes[i, 2]) & (b[:, 2] > boxes[i, 0]) &
               (b[:, 1] < boxes[i, 3]) & (b[:, 3] > boxes[i, 1]))
        for j in np.nonzero(hit)[0] + i + 1:
            fb = foots[j]
            x0, y0 = max(fa.x0, fb.x0), max(fa.y0, fb.y0)
            x1, y1 = min(fa.box[2], fb.box[2]), min(fa.box[3], fb.box[3])
            da = fa.data[y0 - fa.y0:y1 - fa.y0, x0 - fa.x0:x1 - fa.x0]
            db = fb.data[y0 - fb.y0:y1 - fb.y0, x0 - fb.x0:x1 - fb.x0]
            d = (da - db)[np.isfinite(da) & np.isfinite(db)]
            if d.size < min_pixels:
                continue
            _, med, _ = sigma_clipped_stats(d, sigma=sigma, maxiters=5)
            pairs.append(PairDifference(fa.key, fb.key, float(med), int(d.size)))
    return pairs


def solve_offsets(keys: list, pairs: list[PairDifference]) -> MatchResult:
    """Weighted least-squares constants with ``o_a - o_b = d_ab`` (weight sqrt(npix))
    and mean 0 within each connected group of overlapping CCDs; CCDs without any
    overlap get 0."""
    index = {k: i for i, k in enumerate(keys)}
    n, m = len(keys), len(pairs)
    if m == 0:
        return MatchResult({k: 0.0 for k in keys}, [], 0.0)
    ia = np.array([index[p.a] for p in pairs])
    ib = np.array([index[p.b] for p in pairs])
    w = np.sqrt(np.array([p.npix for p in pairs], dtype=float))
    d = np.array([p.median for p in pairs])
    adj = sparse.coo_matrix((np.ones(m), (ia, ib)), shape=(n, n))
    ncomp, labels = connected_components(adj, directed=False)
    # one gauge row per group: sum of its offsets = 0, weighted like the strongest pair
    rows = np.concatenate([np.arange(m), np.arange(m), m + labels])
    cols = np.concatenate([ia, ib, np.arange(n)])
    vals = np.concatenate([w, -w, np.full(n, w.max())])
    a = sparse.csr_matrix((vals, (rows, cols)), shape=(m + ncomp, n))
    rhs = np.concatenate([w * d, np.zeros(ncomp)])
    o = lsqr(a, rhs, atol=1e-12, btol=1e-12, iter_lim=20 * n + 100)[0]
    resid = o[ia] - o[ib] - d
    rms = float(np.sqrt(np.sum(w ** 2 * resid ** 2) / np.sum(w ** 2)))
    return MatchResult({k: float(o[index[k]]) for k in keys}, pairs, rms)


def match_backgrounds(exposures: Iterable[Exposure], grid_wcs: WCS, grid_box, *,
                      bin_size: int = 8, bad_bits: int = 0, sigma: float = 3.0,
                      min_pixels: int = 10) -> MatchResult:
    """Constant background offsets that make overlapping CALEXPs agree.

    Parameters
    ----------
    exposures : iterable of Exposure
        CALEXPs (with WCS and ``info.visit``/``info.ccd``), read one at a time.
    grid_wcs : astropy.wcs.WCS
        The common grid (e.g. the tract WCS), 0-based pixels.
    grid_box : (x0, y0, x1, y1)
        Its pixel box (end-exclusive).
    bin_size : int
        Binning of the grid and of the CALEXPs (block median) before comparison.
    bad_bits : int
        Mask bits of pixels to ignore.
    sigma : float
        Clipping threshold of the pair-difference medians.
    min_pixels : int
        Minimum overlapping binned pixels for a pair to count.

    Returns
    -------
    MatchResult
        ``offsets[(visit, ccd)]`` to subtract from the CALEXP (its units); the mean of
        each connected group of overlapping CCDs is 0, i.e. the mean sky is kept.
    """
    foots, keys = [], []
    for exp in exposures:
        key = (int(exp.info.visit), int(exp.info.ccd))
        keys.append(key)
        f = bin_onto_grid(exp, key, grid_wcs, grid_box, bin_size, bad_bits)
        if f is not None:
            foots.append(f)
    return solve_offsets(keys, pair_differences(foots, min_pixels, sigma))


def match_offsets(exposures: Iterable[Exposure], grid_wcs: WCS, grid_box,
                  **kwargs) -> dict[tuple[int, int], float]:
    """``{(visit, ccd): offset}`` of :func:`match_backgrounds` (same arguments)."""
    return match_backgrounds(exposures, grid_wcs, grid_box, **kwargs).offsets
