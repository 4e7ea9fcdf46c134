"""Stacking statistics over a set of aligned warps: MEANCLIP, MEAN, MEDIAN (numba).

Per output pixel, the inputs that cover it (no NO_DATA) and carry none of the bad mask
planes are combined with one weight per input (inverse of the input's typical variance,
as assembleCoadd does: per-pixel inverse-variance weights would bias star fluxes,
whose pixels carry Poisson variance).

- ``MEANCLIP`` (assembleCoadd's default): the first pass clips about the median at
  ``nsigma`` × a robust scatter (1.4826 MAD, never below the inputs' own noise, so a
  lucky small MAD does not clip good data); further passes clip about the weighted mean
  with the kept values' standard deviation (same floor); ``niter`` passes in all. As in
  SWarp's CLIPPED combine, ``ampfrac`` × the pixel's level is added in quadrature to the
  sigma: inputs of different seeing differ by a fraction of the signal near stars, and
  clipping those differences would bias star fluxes. Fewer than 3 values are never
  clipped (no majority to tell the outlier).
- ``MEAN``: weighted mean. ``MEDIAN``: median, variance (π/2) × that of the mean.

Mask planes: ``REJECTED`` where a covering input was left out for its mask, ``CLIPPED``
where one was sigma-clipped, ``NO_DATA`` where nothing is left; each plane with a
propagation threshold (e.g. SAT: 0.1) is set where the inputs carrying it hold at least
that fraction of the covering weight; other bits of the inputs used are ORed.
Variance: ``sum(w² v) / (sum w)²`` over the values kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

STATISTICS = {"MEAN": 0, "MEANCLIP": 1, "MEDIAN": 2}


@dataclass
class StackResult:
    """Coadd planes of one region."""

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    nimage: np.ndarray
    exptime: np.ndarray


#: Up to this many values the median is found by ranking (n² branch-free comparisons),
#: beyond by quickselect (about 2 n comparisons, but mispredicted branches): measured
#: 35 vs 87 ns at n = 8 and 300 vs 470 ns at n = 30.
RANK_MEDIAN_MAX = 40


@njit(cache=True)
def _median(buf, n, tmp):
    """Median of ``buf[:n]`` (``tmp`` a scratch array of at least ``n``; no allocation);
    exactly the value of a sort (mean of the two middle values for even ``n``)."""
    if n <= RANK_MEDIAN_MAX:
        return _median_rank(buf, n)
    return _median_select(buf, n, tmp)


@njit(cache=True)
def _median_rank(buf, n):
    """Median by ranks: value ``i``'s rank is the number of values below it plus the
    equal ones before it (a permutation of 0..n-1 even with ties); the median is the
    value of rank ``n // 2`` (with that of rank ``n // 2 - 1`` for even ``n``)."""
    k = n // 2
    lo = 0.0
    hi = 0.0
    for i in range(n):
        x = buf[i]
        r = np.int32(0)
        for j in range(n):
            r += np.int32((buf[j] < x) | ((buf[j] == x) & (j < i)))
        hi += x if r == k else 0.0
        lo += x if r == k - 1 else 0.0
    if n % 2 == 1:
        return hi
    return 0.5 * (lo + hi)


@njit(cache=True)
def _median_select(buf, n, tmp):
    """Median by quickselect (Hoare partition, middle pivot) of the upper middle value,
    then the lower middle one for even ``n`` as the largest value left of it."""
    for i in range(n):
        tmp[i] = buf[i]
    k = n // 2
    lo = 0
    hi = n - 1
    while lo < hi:
        pivot = tmp[(lo + hi) >> 1]
        i = lo
        j = hi
        while i <= j:
            while tmp[i] < pivot:
                i += 1
            while tmp[j] > pivot:
                j -= 1
            if i <= j:
                t = tmp[i]
                tmp[i] = tmp[j]
                tmp[j] = t
                i += 1
                j -= 1
        # now tmp[lo..j] <= pivot <= tmp[i..hi], and tmp[j+1..i-1] == pivot
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    upper = tmp[k]
    if n % 2 == 1:
        return upper
    lower = tmp[0]
    for i in range(1, k):
        if tmp[i] > lower:
            lower = tmp[i]
    return 0.5 * (lower + upper)


@njit(parallel=True, cache=True, nogil=True)
def stack_region(imgs, vars_, msks, weights, exptimes, bad_bits, nodata_bit, clipped_bit,
                 rejected_bit, thr_bits, thr_vals, stat, nsigma, niter, ampfrac,
                 out_img, out_var, out_msk, out_n, out_exp):
    """Combine ``imgs[k]`` (k inputs, each ny × nx) pixel by pixel (see module doc)."""
    nin, ny, nx = imgs.shape
    nodata = 1 << nodata_bit
    thr_mask = 0
    for t in range(len(thr_bits)):
        thr_mask |= 1 << thr_bits[t]
    for iy in prange(ny):
        vals = np.empty(nin)
        vv = np.empty(nin)
        ww = np.empty(nin)
        ee = np.empty(nin)
        dev = np.empty(nin)
        tmp = np.empty(nin)
        keep = np.empty(nin, np.bool_)
        thr_w = np.empty(len(thr_bits))
        for ix in range(nx):
            n = 0
            cover_w = 0.0
            bits_or = 0
            rejected = False
            for t in range(len(thr_bits)):
                thr_w[t] = 0.0
            for k in range(nin):
                m = msks[k, iy, ix]
                if m & nodata:
                    continue
                w = weights[k]
                cover_w += w
                for t in range(len(thr_bits)):
                    if (m >> thr_bits[t]) & 1:
                        thr_w[t] += w
                x = imgs[k, iy, ix]
                v = vars_[k, iy, ix]
                if (m & bad_bits) or not (math.isfinite(x) and math.isfinite(v)):
                    rejected = True
                    continue
                bits_or |= m
                vals[n] = x
                vv[n] = v
                ww[n] = w
                ee[n] = exptimes[k]
                keep[n] = True
                n += 1
            bits = bits_or & ~bad_bits & ~thr_mask
            for t in range(len(thr_bits)):
                if cover_w > 0 and thr_w[t] >= thr_vals[t] * cover_w:
                    bits |= 1 << thr_bits[t]
            if rejected:
                bits |= 1 << rejected_bit
            if n == 0:
                out_img[iy, ix] = np.nan
                out_var[iy, ix] = np.nan
                out_msk[iy, ix] = bits | nodata
                out_n[iy, ix] = 0
                out_exp[iy, ix] = 0.0
                continue
            if stat == 2:
                med = _median(vals, n, tmp)
                sv = 0.0
                se = 0.0
                for i in range(n):
                    sv += vv[i]
                    se += ee[i]
                out_img[iy, ix] = med
                out_var[iy, ix] = 0.5 * math.pi * sv / (n * n)
                out_msk[iy, ix] = bits
                out_n[iy, ix] = n
                out_exp[iy, ix] = se
                continue
            if stat == 1 and n >= 3:
                floor2 = 0.0
                for i in range(n):
                    floor2 += vv[i]
                floor2 /= n
                center = _median(vals, n, tmp)
                # the first pass's sigma is at least hypot(floor, ampfrac * center): when
                # no value is that far out, nothing is clipped whatever the MAD, and the
                # second median (the MAD's) is skipped - the case of almost every pixel;
                # compared in squares (no square root, no libm hypot, per pixel)
                far = 0.0
                for i in range(n):
                    far = max(far, abs(vals[i] - center))
                nk = n
                sig = 0.0
                floor = 0.0
                amp = ampfrac * center
                if far * far <= nsigma * nsigma * (floor2 + amp * amp):
                    niter_px = 0
                else:
                    niter_px = niter
                    floor = math.sqrt(floor2)
                    for i in range(n):
                        dev[i] = abs(vals[i] - center)
                    sig = math.hypot(max(1.4826 * _median(dev, n, tmp), floor), amp)
                for it in range(niter_px):
                    nclip = 0
                    for i in range(n):
                        if keep[i] and abs(vals[i] - center) > nsigma * sig:
                            nclip += 1
                    if nclip == 0 or nk - nclip < 1:
                        break
                    for i in range(n):
                        if keep[i] and abs(vals[i] - center) > nsigma * sig:
                            keep[i] = False
                    nk -= nclip
                    bits |= 1 << clipped_bit
                    sw = 0.0
                    sx = 0.0
                    for i in range(n):
                        if keep[i]:
                            sw += ww[i]
                            sx += ww[i] * vals[i]
                    center = sx / sw
                    s2 = 0.0
                    for i in range(n):
                        if keep[i]:
                            s2 += (vals[i] - center) ** 2
                    sig = math.hypot(max(math.sqrt(s2 / nk), floor), ampfrac * center)
                    if nk < 3:
                        break
            sw = 0.0
            sx = 0.0
            sv = 0.0
            se = 0.0
            nk = 0
            for i in range(n):
                if keep[i]:
                    sw += ww[i]
                    sx += ww[i] * vals[i]
                    sv += ww[i] * ww[i] * vv[i]
                    se += ee[i]
                    nk += 1
            out_img[iy, ix] = sx / sw
            out_var[iy, ix] = sv / (sw * sw)
            out_msk[iy, ix] = bits
            out_n[iy, ix] = nk
            out_exp[iy, ix] = se


def stack_arrays(images, variances, masks, weights, exptimes, mask_planes,
                 statistic: str = "MEANCLIP", nsigma: float = 3.0, niter: int = 2,
                 ampfrac: float = 1.0,
                 bad_planes=("BAD", "SAT", "CR", "NO_DATA", "EDGE", "SUSPECT"),
                 thresholds: dict | None = None, out: StackResult | None = None
                 ) -> StackResult:
    """Stack aligned inputs of shape (k, ny, nx) into one region.

    Parameters
    ----------
    images, variances : array_like (k, ny, nx) float32
    masks : array_like (k, ny, nx) int32
    weights, exptimes : array_like (k,)
        One weight and one exposure time per input.
    mask_planes : MaskPlanes
        Bit numbers of the planes (CLIPPED, REJECTED, NO_DATA are created if missing).
    statistic : str
        ``MEANCLIP``, ``MEAN`` or ``MEDIAN``.
    nsigma, niter : float, int
        Clipping threshold and number of clipping passes (MEANCLIP).
    ampfrac : float
        Fraction of the pixel's level added in quadrature to the clipping sigma
        (SWarp's ``CLIP_AMPFRAC``), so seeing differences between inputs are not clipped.
    bad_planes : sequence of str
        Planes that exclude an input pixel.
    thresholds : dict, optional
        Plane → minimum fraction of covering weight for that plane to be set in the
        coadd (default ``{"SAT": 0.1}``).

    out : StackResult, optional
        Planes to write into (each C-contiguous ``(ny, nx)``, dtypes as returned), e.g.
        row bands of the patch coadd: no temporary result and no copy.

    Returns
    -------
    StackResult
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; use one of {list(STATISTICS)}")
    thresholds = {"SAT": 0.1} if thresholds is None else thresholds
    imgs = np.ascontiguousarray(images, dtype=np.float32)
    k, ny, nx = imgs.shape
    if out is None:
        out = StackResult(np.empty((ny, nx), np.float32), np.empty((ny, nx), np.float32),
                          np.empty((ny, nx), np.int32), np.empty((ny, nx), np.int32),
                          np.empty((ny, nx), np.float32))
    thr_bits = np.array([mask_planes.bit(p) for p in thresholds], dtype=np.int64)
    thr_vals = np.array([float(v) for v in thresholds.values()], dtype=np.float64)
    stack_region(imgs, np.ascontiguousarray(variances, dtype=np.float32),
                 np.ascontiguousarray(masks, dtype=np.int32),
                 np.asarray(weights, np.float64), np.asarray(exptimes, np.float64),
                 mask_planes.bitmask(*bad_planes), mask_planes.bit("NO_DATA"),
                 mask_planes.bit("CLIPPED"), mask_planes.bit("REJECTED"), thr_bits,
                 thr_vals, STATISTICS[statistic], float(nsigma), int(niter), float(ampfrac),
                 out.image, out.variance, out.mask, out.nimage, out.exptime)
    return out
