"""Rendering one CCD of one visit: objects, sky, trail, noise, saturation, defects.

Image model (counts = ADU), in this order:

1. stars: a Moffat profile (``beta`` from the truth, FWHM varying over the focal plane)
   sampled at pixel centres, normalised to sum to the star's counts within its stamp;
2. galaxies: Sérsic n=1 (exponential) or n=4 (de Vaucouleurs) ellipses, 3×3
   sub-sampled within 4 pixels of the centre, truncated at 8 r_e (6 for n=1) and normalised, then convolved with the
   CCD-centre PSF (one FFT for the CCD);
3. object counts = true flux (nJy) / true calibration at the object's position;
4. sky: ``sky_level (1 + g (fx cos a + fy sin a) / R)`` (flat-fielded: no QE or
   illumination in it), plus the satellite trail (Gaussian cross-section) if any;
5. Poisson noise in electrons (gain) and Gaussian read noise;
6. saturation: charge above the saturation level bleeds up and down the column
   (flux-conserving), those pixels are set to the level and masked SAT;
7. cosmic rays (masked CR, added before the saturation step) and the CCD's bad
   columns (masked BAD; ``hot`` +3000 ADU, ``dead`` x0.2);
8. variance = noiseless model / gain + (read noise / gain)^2.
"""
from __future__ import annotations

import numba
import numpy as np
from scipy.signal import fftconvolve

from ..image import Exposure, MaskPlanes

_SUB = 3  # galaxy sub-sampling per axis


def moffat_alpha(fwhm_px, beta):
    """Moffat core width alpha for a FWHM (pixels)."""
    return np.asarray(fwhm_px) / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


@numba.njit(cache=True)
def _add_moffat_stars(image, xs, ys, counts, alphas, beta, radii):
    ny, nx = image.shape
    for k in range(xs.shape[0]):
        x0, y0, r = xs[k], ys[k], radii[k]
        i0 = max(int(np.floor(y0 - r)), 0)
        i1 = min(int(np.ceil(y0 + r)), ny - 1)
        j0 = max(int(np.floor(x0 - r)), 0)
        j1 = min(int(np.ceil(x0 + r)), nx - 1)
        if i1 < i0 or j1 < j0:
            continue
        a2 = alphas[k] * alphas[k]
        # normalise over the full (unclipped) stamp so edge stars lose their outer light
        total = 0.0
        ri = int(np.ceil(r))
        iy0 = int(np.floor(y0))
        ix0 = int(np.floor(x0))
        for i in range(iy0 - ri, iy0 + ri + 2):
            for j in range(ix0 - ri, ix0 + ri + 2):
                d2 = (j - x0) ** 2 + (i - y0) ** 2
                if d2 <= r * r:
                    total += (1.0 + d2 / a2) ** (-beta)
        norm = counts[k] / total
        for i in range(max(iy0 - ri, 0), min(iy0 + ri + 2, ny)):
            for j in range(max(ix0 - ri, 0), min(ix0 + ri + 2, nx)):
                d2 = (j - x0) ** 2 + (i - y0) ** 2
                if d2 <= r * r:
                    image[i, j] += norm * (1.0 + d2 / a2) ** (-beta)


@numba.njit(cache=True)
def _add_sersic(image, xs, ys, counts, m11, m12, m21, m22, q, re_px, nser, radii):
    """Add elliptical Sérsic profiles; ``m`` maps pixel offsets to (major, minor)-axis
    offsets in pixels of the sky frame."""
    ny, nx = image.shape
    sub = _SUB
    for k in range(xs.shape[0]):
        x0, y0, r = xs[k], ys[k], radii[k]
        n = nser[k]
        b = 1.678 if n < 2 else 7.669
        inv_n = 1.0 / n
        ri = int(np.ceil(r))
        iy0 = int(np.floor(y0))
        ix0 = int(np.floor(x0))
        h = 2 * ri + 2
        stamp = np.zeros((h, h))
        total = 0.0
        for a in range(h):
            for c in range(h):
                v = 0.0
                # the cusp needs sub-sampling only near the centre
                dyc = iy0 - ri + a - y0
                dxc = ix0 - ri + c - x0
                ns = sub if dxc * dxc + dyc * dyc < 16.0 else 1
                for sa in range(ns):
                    for sc in range(ns):
                        dy = dyc + (sa + 0.5) / ns - 0.5
                        dx = dxc + (sc + 0.5) / ns - 0.5
                        u = m11[k] * dx + m12[k] * dy
                        w = (m21[k] * dx + m22[k] * dy) / q[k]
                        rr = np.sqrt(u * u + w * w)
                        if rr <= r:
                            v += np.exp(-b * ((rr / re_px[k]) ** inv_n - 1.0)) / (ns * ns)
                stamp[a, c] = v
                total += v
        if total <= 0:
            continue
        norm = counts[k] / total
        for a in range(h):
            i = iy0 - ri + a
            if i < 0 or i >= ny:
                continue
            for c in range(h):
                j = ix0 - ri + c
                if j < 0 or j >= nx:
                    continue
                image[i, j] += norm * stamp[a, c]


@numba.njit(cache=True)
def _bleed(image, sat, sat_mask):
    """Clip at ``sat`` and spill the excess charge up and down each column."""
    ny, nx = image.shape
    for j in range(nx):
        i = 0
        while i < ny:
            if image[i, j] < sat:
                i += 1
                continue
            start = i
            excess = 0.0
            while i < ny and image[i, j] >= sat:
                excess += image[i, j] - sat
                image[i, j] = sat
                sat_mask[i, j] = True
                i += 1
            stop = i  # run is [start, stop)
            for direction in (1, -1):
                rem = excess / 2.0
                p = stop if direction == 1 else start - 1
                while rem > 0 and 0 <= p < ny:
                    cap = sat - image[p, j]
                    if cap > 0:
                        take = min(cap, rem)
                        image[p, j] += take
                        rem -= take
                    if image[p, j] >= sat:
                        sat_mask[p, j] = True
                    p += direction
            # pixels filled up to the level re-enter as a run with no excess of their
            # own, so a neighbouring saturated star further up is still processed
            i = stop


def psf_kernel(fwhm_px: float, beta: float) -> np.ndarray:
    """A normalised Moffat kernel sampled at pixel centres (odd size)."""
    r = int(np.ceil(4 * fwhm_px)) + 1
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    a = moffat_alpha(fwhm_px, beta)
    k = (1.0 + (xx ** 2 + yy ** 2) / a ** 2) ** (-beta)
    return k / k.sum()


def star_radius(fwhm_px, counts):
    """Stamp radius (pixels): 6 FWHM for faint stars, up to 30 for the brightest."""
    boost = np.clip(6.0 + 4.0 * np.log10(np.maximum(counts, 1.0) / 1e5), 6.0, 30.0)
    return np.asarray(fwhm_px) * boost


def galaxy_shapes(truth, visit, ccd, idx, x, y):
    """Per-galaxy matrix from pixel offsets to (major, minor)-axis offsets (pixels),
    from the local Jacobian of the true sky→pixel map."""
    o = truth.objects
    ra, dec = truth.pixel_to_sky(visit, ccd, x, y)
    step = 1.0 / 3600.0
    cosd = np.cos(np.radians(dec))
    xe, ye = truth.sky_to_pixel(visit, ccd, ra + step / cosd, dec)  # 1" east
    xn, yn = truth.sky_to_pixel(visit, ccd, ra, dec + step)          # 1" north
    scale = truth.camera.pixel_scale
    # J: sky (east, north) arcsec → pixel; its inverse times pixel_scale maps pixel
    # offsets to sky offsets in "pixels" of pixel_scale
    j11, j21 = xe - x, ye - y
    j12, j22 = xn - x, yn - y
    det = j11 * j22 - j12 * j21
    i11, i12, i21, i22 = j22 / det, -j12 / det, -j21 / det, j11 / det
    pa = np.radians(np.asarray(o["pa"], float)[idx])
    # unit vectors of the major axis (east of north) in (east, north)
    me, mn = np.sin(pa), np.cos(pa)
    # major = (me, mn) . s, minor = (-mn, me) . s, s = inv(J) d / scale
    m11 = (me * i11 + mn * i21) / scale
    m12 = (me * i12 + mn * i22) / scale
    m21 = (-mn * i11 + me * i21) / scale
    m22 = (-mn * i12 + me * i22) / scale
    return m11, m12, m21, m22


def render_objects(truth, visit, ccd):
    """Noiseless object image (counts) of ``(visit, ccd)``."""
    ny, nx = truth.ccd_shape(ccd)
    beta = float(truth.psf["beta"])
    scale = truth.camera.pixel_scale
    image = np.zeros((ny, nx))
    idx, x, y = truth.objects_on(visit, ccd, margin=60)
    if idx.size == 0:
        return image
    counts = truth.true_counts(visit, ccd, idx, x, y)
    is_star = np.asarray(truth.objects["type"])[idx] == "star"
    # stars
    s = is_star
    fwhm_px = truth.psf_fwhm(visit, ccd, x[s], y[s]) / scale
    _add_moffat_stars(image, x[s].astype(float), y[s].astype(float), counts[s],
                      moffat_alpha(fwhm_px, beta), beta, star_radius(fwhm_px, counts[s]))
    # galaxies, convolved with the PSF at the CCD centre
    g = ~is_star
    if g.any():
        o = truth.objects
        gi = idx[g]
        re_px = np.asarray(o["r_e"], float)[gi] / scale
        nser = np.asarray(o["sersic_n"], float)[gi]
        radii = np.clip(np.where(nser > 2, 8.0, 6.0) * re_px, 3.0, 150.0)
        m11, m12, m21, m22 = galaxy_shapes(truth, visit, ccd, gi, x[g], y[g])
        gal = np.zeros((ny, nx))
        _add_sersic(gal, x[g].astype(float), y[g].astype(float), counts[g], m11, m12, m21,
                    m22, np.asarray(o["q"], float)[gi], re_px, nser, radii)
        fwhm_c = float(truth.psf_fwhm(visit, ccd, (nx - 1) / 2, (ny - 1) / 2)) / scale
        image += fftconvolve(gal, psf_kernel(fwhm_c, beta), mode="same")
    return image


def sky_model(truth, visit, ccd):
    """Sky background (counts) with its focal-plane gradient, plus any satellite trail."""
    v = truth.visit(visit)
    ny, nx = truth.ccd_shape(ccd)
    yy, xx = np.mgrid[0:ny, 0:nx]
    fx, fy = truth.camera.to_focal(ccd, xx, yy)
    a = np.radians(v["sky_gradient_angle"])
    sky = v["sky_level"] * (1.0 + v["sky_gradient"] * (fx * np.cos(a) + fy * np.sin(a))
                            / truth.camera.fp_radius)
    tr = v.get("trail")
    if tr:
        t = np.radians(tr["angle_deg"])
        dist = (fx - tr["fx"]) * np.sin(t) - (fy - tr["fy"]) * np.cos(t)
        sky = sky + tr["peak_adu"] * np.exp(-0.5 * (dist / tr["sigma_px"]) ** 2)
    return sky


def add_cosmic_rays(image, mask_cr, rng, rate_per_mpx):
    """Add short straight cosmic-ray tracks (1–12 px, 300–4000 ADU) and flag them."""
    ny, nx = image.shape
    n = int(rng.poisson(rate_per_mpx * ny * nx / 1e6))
    if n == 0:
        return
    length = rng.integers(1, 13, n)
    ang = rng.uniform(0, np.pi, n)
    x0, y0 = rng.uniform(0, nx, n), rng.uniform(0, ny, n)
    amp = rng.uniform(300, 4000, n)
    steps = np.arange(12)
    px = np.rint(x0[:, None] + steps[None, :] * np.cos(ang)[:, None]).astype(int)
    py = np.rint(y0[:, None] + steps[None, :] * np.sin(ang)[:, None]).astype(int)
    ok = (steps[None, :] < length[:, None]) & (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    a = np.broadcast_to(amp[:, None], px.shape)
    np.add.at(image, (py[ok], px[ok]), a[ok])
    mask_cr[py[ok], px[ok]] = True


def render_ccd(truth, visit, ccd, config, seed, header=None) -> Exposure:
    """The simulated exposure of ``(visit, ccd)``, deterministic for ``seed``."""
    from ..image import ExposureInfo, PhotoCalib
    from .observing import seeded

    v = truth.visit(visit)
    rng = seeded(seed, 10, visit, ccd)
    gain, rn, sat = config.gain, config.read_noise, config.saturation
    model = render_objects(truth, visit, ccd) + sky_model(truth, visit, ccd)
    electrons = rng.poisson(np.maximum(model, 0) * gain).astype(np.float64)
    image = electrons / gain + rng.normal(0.0, rn / gain, model.shape)
    mp = MaskPlanes()
    mask = np.zeros(model.shape, dtype=np.int32)
    cr = np.zeros(model.shape, dtype=bool)
    add_cosmic_rays(image, cr, rng, config.cosmic_ray_rate)
    satm = np.zeros(model.shape, dtype=bool)
    _bleed(image, float(sat), satm)
    mask[cr] |= mp.bitmask("CR")
    mask[satm] |= mp.bitmask("SAT")
    for x, start, kind in truth.camera.bad_columns[truth.camera.index(ccd)]:
        col = image[start:, x]
        image[start:, x] = col + 3000.0 if kind == "hot" else 0.2 * col
        mask[start:, x] |= mp.bitmask("BAD")
    variance = np.maximum(model, 0) / gain + (rn / gain) ** 2
    ny, nx = model.shape
    fwhm = float(truth.psf_fwhm(visit, ccd, (nx - 1) / 2, (ny - 1) / 2))
    from astropy.time import Time

    info = ExposureInfo(
        visit=int(visit), ccd=int(ccd), ccdname=truth.camera.ccdname(ccd),
        filter=v["filter"], field=v["field"], pointing=int(v["pointing"]),
        instrument="hsc", exptime=float(config.exptime), mjd=float(v["mjd"]),
        date_obs=Time(v["mjd"], format="mjd", scale="utc").isot, timesys="UTC",
        gain=float(gain), saturation=float(sat), psf_fwhm=round(fwhm, 4))
    # the nominal (observatory) zero point, as a single-frame calexp would carry
    pc = PhotoCalib.constant(truth.filters[v["filter"]]["calib0"], bbox=(0, 0, nx, ny))
    return Exposure(image=image.astype(np.float32), mask=mask,
                    variance=variance.astype(np.float32),
                    wcs=truth.header_wcs(visit, ccd), photo_calib=pc, info=info,
                    mask_planes=mp, header=dict(header or {}))
