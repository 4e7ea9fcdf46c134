"""Artefact rejection by comparing each warp with a robust template (as LSST's
CompareWarpAssembleCoadd): transients seen in a minority of the inputs (satellite
trails, unflagged cosmic rays, ghosts) are found on each input's difference image and
masked (REJECTED) in that input before the final statistic.

MEANCLIP cannot tell which of two values is the outlier; this can, because it uses
spatial information: a trail is a large connected positive residual in one input.

Per region of the stack (``k`` inputs, aligned):

1. **Template** per pixel from the inputs that cover it with no bad plane: the mean for
   two values, the median for three or more (one value: nothing is compared).
2. **Significance** of input ``k``: ``(x_k - T) / sqrt(var_d + (ampfrac * max(L, 0))²)``
   with ``var_d`` the variance of the difference (exact ``(v1 + v2) / 4`` for two
   values; ``v_k + (π/2) mean(v) / n`` for the median) and ``L`` the level: the
   median, or for two values the lower one (their mean holds half of a trail). The amplitude term (as
   MEANCLIP's ``clipAmpFrac``) keeps the positive core residual of a star seen in
   better seeing (or a mildly variable star) from being significant, so sources present
   in every input are never cut; on sky ``T ≈ 0`` and the term vanishes.
3. **Footprints**: connected pixels (8-connectivity, within one input) above
   ``threshold`` σ, kept when they have at least ``min_area`` pixels and a peak above
   ``peak_threshold`` σ (pure noise essentially never gives that).
4. **Minority rule** (LSST's ``maxFractionEpochs`` with ``spatialThreshold``): a
   footprint is an artefact when, over at least ``spatial_fraction`` of its pixels,
   the number of inputs with a footprint there is at most
   ``max(1, floor(max_fraction_epochs × n))`` of the ``n`` covering inputs — something
   in most inputs is real (a variable source, a seeing difference).
5. **Sources of the template**: where the level is above ``source_threshold`` times
   its noise, grown by ``source_grow`` pixels (real objects). A footprint with at least
   ``max_source_fraction`` of its pixels on them is dropped: around a star seen in
   different seeing the residual is a ring or core on the star (LSST compares
   PSF-matched warps instead); a trail is long and crosses mostly sky, so it stays
   (and is masked across the stars it crosses too).
6. The artefacts are **grown** by ``grow`` pixels (a disc), within their input's valid
   pixels.

All steps are vectorised: a numba kernel for steps 1-2 (no temporaries per pixel),
``scipy.ndimage.label`` / ``bincount`` / ``maximum`` / ``binary_dilation`` for 3-5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange
from scipy import ndimage

from .stack import _median


@dataclass
class ArtifactParams:
    """Detection parameters (see the module doc; defaults as CoaddDriverConfig)."""

    threshold: float = 3.0
    peak_threshold: float = 5.0
    min_area: int = 20
    grow: int = 2
    ampfrac: float = 1.0
    max_fraction_epochs: float = 0.4
    spatial_fraction: float = 0.5
    source_threshold: float = 3.0
    source_grow: int = 4
    max_source_fraction: float = 0.5


@njit(parallel=True, cache=True, nogil=True)
def difference_significance(imgs, vars_, msks, bad_bits, ampfrac, out_sig, out_n,
                            out_level_sn):
    """Per input and pixel the significance of ``imgs[k]`` above the template (0 where the
    input is not valid or fewer than two inputs are); ``out_n`` the valid inputs,
    ``out_level_sn`` the level's signal-to-noise (that of the value where one input)."""
    nin, ny, nx = imgs.shape
    for iy in prange(ny):
        vals = np.empty(nin)
        tmp = np.empty(nin)
        for ix in range(nx):
            n = 0
            sv = 0.0
            for k in range(nin):
                x = imgs[k, iy, ix]
                v = vars_[k, iy, ix]
                out_sig[k, iy, ix] = 0.0
                if (msks[k, iy, ix] & bad_bits) == 0 and math.isfinite(x) and \
                        math.isfinite(v) and v > 0:
                    vals[n] = x
                    sv += v
                    n += 1
            out_n[iy, ix] = n
            out_level_sn[iy, ix] = 0.0
            if n == 1:
                # nothing to compare, but a source seen by one input is still a source
                # (e.g. a star whose core only one visit covers, its wings by two)
                out_level_sn[iy, ix] = vals[0] / math.sqrt(sv)
            if n < 2:
                continue
            if n == 2:
                t = 0.5 * (vals[0] + vals[1])
                # both differences are +-(x1 - x2)/2: variance (v1 + v2)/4
                vt = -1.0
                vd2 = 0.25 * sv
                # the level for the amplitude term: the lower value (the mean holds
                # half of a trail, which would hide it)
                level = min(vals[0], vals[1])
                out_level_sn[iy, ix] = level / math.sqrt(0.5 * sv)
            else:
                t = _median(vals, n, tmp)
                vt = 0.5 * math.pi * sv / (n * n)
                vd2 = 0.0
                level = t
                out_level_sn[iy, ix] = t / math.sqrt(vt)
            amp2 = (ampfrac * level) ** 2 if level > 0 else 0.0
            for k in range(nin):
                x = imgs[k, iy, ix]
                v = vars_[k, iy, ix]
                if (msks[k, iy, ix] & bad_bits) == 0 and math.isfinite(x) and \
                        math.isfinite(v) and v > 0:
                    vd = vd2 if vt < 0 else v + vt
                    out_sig[k, iy, ix] = (x - t) / math.sqrt(vd + amp2)


def _disc(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius + 0.5


def detect_artifacts(imgs, vars_, msks, bad_bits: int,
                     params: ArtifactParams | None = None) -> np.ndarray:
    """Pixels of each input to reject as artefacts.

    Parameters
    ----------
    imgs, vars_ : array (k, ny, nx) float32
        Aligned inputs (e.g. the visit layers of one band of a patch).
    msks : array (k, ny, nx) integer
    bad_bits : int
        Mask bits that exclude an input pixel (NO_DATA included).
    params : ArtifactParams, optional

    Returns
    -------
    ndarray of bool, (k, ny, nx)
        True where input ``k``'s pixel belongs to a (grown) artefact footprint.
    """
    p = params or ArtifactParams()
    k, ny, nx = imgs.shape
    out = np.zeros((k, ny, nx), bool)
    if k < 2 or ny == 0 or nx == 0:
        return out
    sig = np.empty((k, ny, nx), np.float32)
    nvalid = np.empty((ny, nx), np.int32)
    level_sn = np.empty((ny, nx), np.float32)
    difference_significance(imgs, vars_, msks, np.int64(bad_bits), float(p.ampfrac),
                            sig, nvalid, level_sn)
    # footprints within one input: connectivity in the image plane only
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True
    labels, nlab = ndimage.label(sig > p.threshold, structure=structure)
    if nlab == 0:
        return out
    # per-footprint area and peak from the labelled pixels alone (ndimage.maximum
    # would argsort the whole cube)
    where = np.flatnonzero(labels)
    lab = labels.ravel()[where]
    area = np.bincount(lab, minlength=nlab + 1)
    peak = np.zeros(nlab + 1, np.float32)
    np.maximum.at(peak, lab, sig.ravel()[where])
    cand = (area >= p.min_area) & (peak >= p.peak_threshold)
    cand[0] = False
    if not cand.any():
        return out
    in_cand = cand[labels]                       # (k, ny, nx)
    nflag = in_cand.sum(axis=0)                  # inputs with a candidate there
    max_epochs = np.maximum(1, np.floor(p.max_fraction_epochs * nvalid)).astype(np.int32)
    minority = nflag <= max_epochs               # (ny, nx)
    hit = np.bincount(labels[in_cand], weights=np.broadcast_to(minority, labels.shape)
                      [in_cand], minlength=nlab + 1)
    keep = cand & (hit >= p.spatial_fraction * np.maximum(area, 1))
    if p.max_source_fraction < 1:
        # sources of the template (its level significant, grown): a footprint mostly
        # on them is a seeing (PSF) difference around a real object, not an artefact
        # connected regions of min_area pixels at least: not the noise peaks of the
        # template, which would blanket the sky once grown
        lab2, _ = ndimage.label(level_sn > p.source_threshold,
                                structure=np.ones((3, 3), bool))
        size2 = np.bincount(lab2.ravel())
        size2[0] = 0
        src = size2[lab2] >= p.min_area
        if p.source_grow > 0:
            src = ndimage.binary_dilation(src, structure=_disc(p.source_grow))
        on_src = np.bincount(labels[in_cand], weights=np.broadcast_to(src, labels.shape)
                             [in_cand], minlength=nlab + 1)
        keep &= on_src < p.max_source_fraction * np.maximum(area, 1)
    keep[0] = False
    art = keep[labels]
    if p.grow > 0 and art.any():
        art = ndimage.binary_dilation(art, structure=_disc(p.grow)[None])
    valid = (np.asarray(msks) & bad_bits) == 0
    np.logical_and(art, valid, out=out)
    return out


def params_from_config(config) -> ArtifactParams:
    """The detection parameters of a CoaddDriverConfig."""
    return ArtifactParams(threshold=config.artifactThreshold,
                          peak_threshold=config.artifactPeakThreshold,
                          min_area=config.artifactMinArea, grow=config.artifactGrow,
                          ampfrac=config.artifactAmpFrac,
                          max_fraction_epochs=config.artifactMaxFractionEpochs,
                          spatial_fraction=config.artifactSpatialFraction,
                          source_threshold=config.artifactSourceThreshold,
                          source_grow=config.artifactSourceGrow,
                          max_source_fraction=config.artifactMaxSourceFraction)
