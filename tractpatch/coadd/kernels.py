"""Resampling kernels (Lanczos2..5, bilinear) and the numba warping loop.

The loop resamples one CCD onto a rectangular region of an output grid. The source
position of every output pixel comes from a coarse grid of exact pixel→sky→pixel
transforms (see :mod:`tractpatch.coadd.transform`), bilinearly interpolated inside the
loop so no full-resolution coordinate arrays are ever allocated.

Per output pixel the separable kernel weights ``w`` (each 1-D kernel normalised to unit
sum, as LSST's warper does) are applied to the *good* input pixels only:

- ``image = J * sum(w I) / sum(w)`` and ``variance = J^2 sum(w^2 V) / sum(w)^2``
  (``J`` the output→input pixel-area ratio, so total flux is conserved);
- a mask bit is set in the output where the input pixels carrying it hold more than
  ``mask_threshold`` of the kernel's absolute weight; a single bad pixel therefore
  marks only the output pixels it really influences (about 2×2 for Lanczos3 at
  half-pixel phase), not the whole kernel footprint as SWarp does;
- pixels off the CCD count as ``NO_DATA`` weight, so the CCD edge (and everything beyond
  it) is ``NO_DATA`` where the missing weight exceeds the threshold.

Speed: a pixel's weights are one row of a per-phase table of normalised weights
(:func:`phase_table`; the position rounded to 1/8192 pixel), and the Lanczos3 sums of
clean footprints go columns first in float32 (:func:`_sum6`), which LLVM vectorises:
together 1.7× faster than a per-tap kernel lookup and a horizontal sum per kernel row.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

#: Kernel name → half-width ``a`` (support is 2a pixels); bilinear is the tent of a=1.
KERNELS: dict[str, int] = {
    "bilinear": 1, "lanczos2": 2, "lanczos3": 3, "lanczos4": 4, "lanczos5": 5,
}


def kernel_code(name: str) -> tuple[int, int]:
    """``(kind, a)`` for the numba loop: kind 0 = bilinear, 1 = Lanczos."""
    if name not in KERNELS:
        raise ValueError(f"unknown warping kernel {name!r}; use one of {', '.join(KERNELS)}")
    return (0 if name == "bilinear" else 1), KERNELS[name]


@njit(cache=True)
def _kernel_value(x, kind, a):
    """Kernel at offset ``x`` (reference form, used by the tests)."""
    ax = abs(x)
    if kind == 0:
        return max(0.0, 1.0 - ax)
    if ax >= a:
        return 0.0
    if ax < 1e-8:
        return 1.0
    px = math.pi * x
    return a * math.sin(px) * math.sin(px / a) / (px * px)


@njit(cache=True)
def kernel_weights(frac, kind, a, out):
    """Normalised 1-D weights for offsets ``-a+1..a`` from ``floor(x)``; ``frac = x - floor(x)``.

    Lanczos: the sample offsets ``x_k = frac + a - 1 - k`` differ by whole pixels, so
    ``sin(pi x_k) = (-1)^k sin(pi x_0)`` and ``sin(pi x_k / a)`` follows by angle addition:
    five trigonometric calls per axis instead of 4a.
    """
    if kind == 0:
        out[0] = 1.0 - frac
        out[1] = frac
        return
    x0 = frac + a - 1
    s_pi = math.sin(math.pi * x0)
    th = math.pi * x0 / a
    s_th = math.sin(th)
    c_th = math.cos(th)
    cd = math.cos(math.pi / a)
    sd = math.sin(math.pi / a)
    s = 0.0
    for k in range(2 * a):
        x = x0 - k
        if abs(x) < 1e-8:
            w = 1.0
        else:
            sp = s_pi if k % 2 == 0 else -s_pi
            w = a * sp * s_th / (math.pi * math.pi * x * x)
        out[k] = w
        s += w
        # sin/cos(theta - (k+1) pi/a) by angle addition
        s_th, c_th = s_th * cd - c_th * sd, c_th * cd + s_th * sd
    for k in range(2 * a):
        out[k] /= s


#: Phases per pixel of :func:`phase_table`: the warper rounds each sample position's
#: fractional part to the nearest of these, a shift of at most 1 / (2 * 8192) = 6e-5
#: pixel (two orders below the 0.01-pixel bound on the coarse-grid transform).
PHASES = 8192


def phase_table(name: str, nphase: int = PHASES) -> np.ndarray:
    """Normalised kernel weights for every phase: row ``i`` holds the ``2 a`` weights
    (offsets ``-a+1..a`` from ``floor(x)``) for ``frac = x - floor(x) = i / nphase``,
    each row summing to 1 (as :func:`kernel_weights`).

    The warper reads a pixel's weights as one row (no per-pixel kernel evaluation,
    interpolation or normalisation); the table is 8193 × 6 doubles for Lanczos3 (390 kB,
    in the core's L2 cache).
    """
    kind, a = kernel_code(name)
    frac = np.arange(nphase + 1) / nphase
    x = frac[:, None] + (a - 1) - np.arange(2 * a)[None, :]
    if kind == 0:
        w = np.maximum(0.0, 1.0 - np.abs(x))
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            w = a * np.sin(np.pi * x) * np.sin(np.pi * x / a) / (np.pi * x) ** 2
        w[np.abs(x) < 1e-8] = 1.0
        w[np.abs(x) >= a] = 0.0
    return np.ascontiguousarray(w / w.sum(axis=1, keepdims=True))


#: Fast-math flags of the warping loop: reassociation lets LLVM vectorise the tap sums;
#: no "nnan"/"ninf", since the footprint test must still reject NaN positions.
FASTMATH = {"contract", "reassoc", "arcp", "nsz"}


@njit(parallel=True, cache=True)
def clean_windows(msk, n):
    """``out[y, x] = 1`` where ``msk[y, x:x+n]`` is all zero (uint8, same shape as ``msk``).

    The warping loop reads one byte per kernel row instead of ``n`` mask words to tell
    that a footprint carries no mask bit at all (the fast path).
    """
    ny, nx = msk.shape
    out = np.zeros((ny, nx), np.uint8)
    for y in prange(ny):
        run = 0  # zero-mask pixels from x to the right
        for x in range(nx - 1, -1, -1):
            if msk[y, x] == 0:
                run += 1
            else:
                run = 0
            if run >= n:
                out[y, x] = 1
    return out


@njit(cache=True, inline="always", fastmath=FASTMATH)
def _sum6(img, var, y0, x0, wx, wy):
    """Lanczos3 sums over a 6 × 6 footprint: ``(sum wy wx I, sum wy^2 wx^2 V)``.

    Columns first: each kernel row adds ``wy[ky] * I[y0 + ky, x0:x0 + 6]`` into six
    column accumulators (independent multiply-adds on contiguous pixels, which LLVM
    turns into SIMD), and a single horizontal dot product with ``wx`` ends it. The
    row-by-row order (a horizontal reduction per kernel row) is twice slower.
    """
    # the column sums in float32, as the pixels (six terms: ~1e-7 relative rounding,
    # that of the float32 output), twice as many per SIMD register; the final dot
    # product in float64
    c0 = c1 = c2 = c3 = c4 = c5 = np.float32(0.0)
    d0 = d1 = d2 = d3 = d4 = d5 = np.float32(0.0)
    for ky in range(6):
        w = np.float32(wy[ky])
        q = w * w
        yy = y0 + ky
        c0 += w * img[yy, x0]
        c1 += w * img[yy, x0 + 1]
        c2 += w * img[yy, x0 + 2]
        c3 += w * img[yy, x0 + 3]
        c4 += w * img[yy, x0 + 4]
        c5 += w * img[yy, x0 + 5]
        d0 += q * var[yy, x0]
        d1 += q * var[yy, x0 + 1]
        d2 += q * var[yy, x0 + 2]
        d3 += q * var[yy, x0 + 3]
        d4 += q * var[yy, x0 + 4]
        d5 += q * var[yy, x0 + 5]
    s = (wx[0] * c0 + wx[1] * c1) + (wx[2] * c2 + wx[3] * c3) + (wx[4] * c4 + wx[5] * c5)
    v = ((wx[0] * wx[0] * d0 + wx[1] * wx[1] * d1) + (wx[2] * wx[2] * d2
         + wx[3] * wx[3] * d3) + (wx[4] * wx[4] * d4 + wx[5] * wx[5] * d5))
    return s, v


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def warp_region(img, var, msk, bad_bits, nodata_bit, gx, gy, gj, step, ny, nx,
                ptab, nphase, a, mask_threshold, out_img, out_var, out_msk, out_cov,
                clean, all_clean, scale):
    """Resample ``img``/``var``/``msk`` onto an ``ny × nx`` output region.

    Parameters
    ----------
    img, var : 2-D float32 arrays of the input CCD.
    msk : 2-D int32 mask bits of the input; non-finite image or variance pixels must
        carry a ``bad_bits`` bit (see :func:`tractpatch.coadd.warp.flag_nonfinite`).
    bad_bits : int
        Bits whose pixels are left out of the interpolation.
    nodata_bit : int
        Bit number of NO_DATA (set where the missing/bad weight is too large).
    gx, gy, gj : 2-D float64 arrays
        Input x, y and pixel-area ratio at coarse-grid nodes ``(j*step, i*step)`` of the
        output region (covering it, last node at or beyond the edge).
    step : int
        Node spacing in output pixels.
    ptab, nphase : the kernel's weights per phase (:func:`phase_table`) and its phases
        per pixel; a position's weights are the row of its nearest phase.
    a : int
        Kernel half-width (:func:`kernel_code`).
    mask_threshold : float
        Fraction of absolute kernel weight above which an input bit is propagated.
    out_img, out_var, out_cov : 2-D float32 outputs; ``out_cov`` is the fraction of the
        kernel's absolute weight on good pixels (0 where nothing landed).
    out_msk : 2-D int32 output mask.
    clean : 2-D uint8, :func:`clean_windows` of ``msk`` for ``2 a`` (ignored, and may be
        empty, when ``all_clean``).
    all_clean : bool
        ``msk`` is zero everywhere.
    scale : float
        Factor applied to the image (its square to the variance), e.g. to the coadd zero
        point.
    """
    sny, snx = img.shape
    n = 2 * a
    scale2 = scale * scale
    for iy in prange(ny):
        wx2 = np.empty(n)
        frac = np.zeros(32)
        cj = iy // step
        fy = (iy - cj * step) / step
        # the grid interpolated to this row once: per pixel, a lerp between two nodes
        ngx = gx.shape[1]
        rx = np.empty(ngx)
        ry = np.empty(ngx)
        rj = np.empty(ngx)
        for i in range(ngx):
            rx[i] = (1 - fy) * gx[cj, i] + fy * gx[cj + 1, i]
            ry[i] = (1 - fy) * gy[cj, i] + fy * gy[cj + 1, i]
            rj[i] = (1 - fy) * gj[cj, i] + fy * gj[cj + 1, i]
        for ix in range(nx):
            ci = ix // step
            fx = (ix - ci * step) / step
            sx = (1 - fx) * rx[ci] + fx * rx[ci + 1]
            sy = (1 - fx) * ry[ci] + fx * ry[ci + 1]
            if not (sx > -0.5 and sx < snx - 0.5 and sy > -0.5 and sy < sny - 0.5):
                out_img[iy, ix] = 0.0
                out_var[iy, ix] = 0.0
                out_msk[iy, ix] = 1 << nodata_bit
                out_cov[iy, ix] = 0.0
                continue
            jac = (1 - fx) * rj[ci] + fx * rj[ci + 1]
            x0 = int(math.floor(sx))
            y0 = int(math.floor(sy))
            wx = ptab[int((sx - x0) * nphase + 0.5)]
            wy = ptab[int((sy - y0) * nphase + 0.5)]
            x0 -= a - 1
            y0 -= a - 1
            # fast path (almost every pixel): footprint inside the CCD, no mask bit set;
            # the weights then sum to 1 and nothing needs bookkeeping
            inside = x0 >= 0 and y0 >= 0 and x0 + n <= snx and y0 + n <= sny
            if inside and not all_clean:
                for ky in range(n):
                    if clean[y0 + ky, x0] == 0:
                        inside = False
                        break
            if inside and n == 6:
                s, v = _sum6(img, var, y0, x0, wx, wy)
                out_img[iy, ix] = jac * s * scale
                out_var[iy, ix] = jac * jac * v * scale2
                out_msk[iy, ix] = 0
                out_cov[iy, ix] = 1.0
                continue
            if inside:
                s = 0.0
                v = 0.0
                for kx in range(n):
                    wx2[kx] = wx[kx] * wx[kx]
                for ky in range(n):
                    yy = y0 + ky
                    rs = 0.0
                    rv = 0.0
                    for kx in range(n):
                        xx = x0 + kx
                        rs += wx[kx] * img[yy, xx]
                        rv += wx2[kx] * var[yy, xx]
                    s += wy[ky] * rs
                    v += wy[ky] * wy[ky] * rv
                out_img[iy, ix] = jac * s * scale
                out_var[iy, ix] = jac * jac * v * scale2
                out_msk[iy, ix] = 0
                out_cov[iy, ix] = 1.0
                continue
            s = 0.0
            v = 0.0
            wsum = 0.0
            total_abs = 0.0
            good_abs = 0.0
            missing_abs = 0.0
            any_bits = False
            for ky in range(n):
                yy = y0 + ky
                for kx in range(n):
                    w = wy[ky] * wx[kx]
                    aw = abs(w)
                    if aw == 0.0:
                        continue
                    total_abs += aw
                    xx = x0 + kx
                    if yy < 0 or yy >= sny or xx < 0 or xx >= snx:
                        missing_abs += aw
                        continue
                    m = msk[yy, xx]
                    if m != 0:
                        if not any_bits:
                            for b in range(32):
                                frac[b] = 0.0
                            any_bits = True
                        for b in range(32):
                            if (m >> b) & 1:
                                frac[b] += aw
                        if m & bad_bits:
                            continue
                    s += w * img[yy, xx]
                    v += w * w * var[yy, xx]
                    wsum += w
                    good_abs += aw
            bits = 0
            if any_bits:
                for b in range(32):
                    if frac[b] > mask_threshold * total_abs:
                        bits |= 1 << b
            if missing_abs > mask_threshold * total_abs:
                bits |= 1 << nodata_bit
            if good_abs <= 0.0 or abs(wsum) < 1e-3:
                out_img[iy, ix] = 0.0
                out_var[iy, ix] = 0.0
                out_msk[iy, ix] = bits | (1 << nodata_bit)
                out_cov[iy, ix] = 0.0
                continue
            out_img[iy, ix] = jac * s / wsum * scale
            out_var[iy, ix] = jac * jac * v / (wsum * wsum) * scale2
            out_msk[iy, ix] = bits
            out_cov[iy, ix] = good_abs / total_abs
