"""Synthetic scenes for the coadd tests: WCSs (TAN, TAN-SIP) and Gaussian stars.

Imported by the other ``test_coadd*`` files; its own tests check the scene maker.
"""
from __future__ import annotations

import numpy as np
from astropy.wcs import WCS
from astropy.wcs import Sip

from tractpatch.image import Exposure, ExposureInfo

RA0, DEC0 = 150.0, 2.0


def make_wcs(shape, scale_arcsec=0.2, rot_deg=0.0, ra=RA0, dec=DEC0, crpix=None,
             sip=False):
    """A TAN (or TAN-SIP) WCS of an image of ``shape`` centred near (ra, dec)."""
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = crpix if crpix is not None else [nx / 2 + 0.5, ny / 2 + 0.5]
    s = scale_arcsec / 3600.0
    c, sn = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    w.wcs.cd = np.array([[-s * c, s * sn], [s * sn, s * c]])
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    if sip:
        w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        # ~1-2 pixels of distortion at the corners of a few-hundred-pixel image
        a[2, 0], a[0, 2], a[1, 1], a[3, 0] = 2e-5, -1e-5, 1.5e-5, 4e-8
        b[0, 2], b[2, 0], b[1, 1], b[0, 3] = 1.8e-5, 1e-5, -1e-5, -3e-8
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
        w.wcs.set()
    return w


def render_stars(shape, wcs, stars, sigma_arcsec):
    """Point-sampled circular Gaussians (``stars`` rows: ra, dec, flux) in ``wcs`` pixels.

    The profile is circular on the sky; its pixel-frame shape uses the local Jacobian of
    the WCS at each star, and values are flux per pixel (area = local pixel area).
    """
    ny, nx = shape
    img = np.zeros(shape)
    yy, xx = np.mgrid[0:ny, 0:nx]
    for ra, dec, flux in stars:
        x, y = wcs.world_to_pixel_values(ra, dec)
        ix, iy = int(round(float(x))), int(round(float(y)))
        r = 12 * max(1.0, sigma_arcsec / 0.15)
        sl = (slice(max(0, iy - int(r)), iy + int(r) + 1),
              slice(max(0, ix - int(r)), ix + int(r) + 1))
        px, py = xx[sl].ravel().astype(float), yy[sl].ravel().astype(float)
        pra, pdec = wcs.pixel_to_world_values(px, py)
        # tangent-plane offsets in arcsec
        dx = (pra - ra) * np.cos(np.radians(dec)) * 3600.0
        dy = (pdec - dec) * 3600.0
        area = pixel_area_arcsec2(wcs, px, py)
        prof = flux / (2 * np.pi * sigma_arcsec ** 2) * np.exp(
            -(dx ** 2 + dy ** 2) / (2 * sigma_arcsec ** 2))
        img[sl] += (prof * area).reshape(img[sl].shape)
    return img


def pixel_area_arcsec2(wcs, x, y, h=0.5):
    """Local pixel area (arcsec²) by central differences of the WCS."""
    def sky(px, py):
        r, d = wcs.pixel_to_world_values(px, py)
        return r * np.cos(np.radians(d)) * 3600.0, d * 3600.0
    ax, ay = sky(x + h, y)
    bx, by = sky(x - h, y)
    cx, cy = sky(x, y + h)
    dx_, dy_ = sky(x, y - h)
    return np.abs(((ax - bx) * (cy - dy_) - (cx - dx_) * (ay - by)) / (2 * h) ** 2)


def star_list(wcs, shape, n=9, flux=1e5, margin=40, seed=1):
    """``n`` stars on a jittered grid inside the image, as (ra, dec, flux) rows."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    k = int(np.ceil(np.sqrt(n)))
    gx = np.linspace(margin, nx - 1 - margin, k)
    gy = np.linspace(margin, ny - 1 - margin, k)
    xx, yy = np.meshgrid(gx, gy)
    x = xx.ravel()[:n] + rng.uniform(-0.5, 0.5, n)
    y = yy.ravel()[:n] + rng.uniform(-0.5, 0.5, n)
    ra, dec = wcs.pixel_to_world_values(x, y)
    return np.column_stack([ra, dec, np.full(n, flux)])


def make_exposure(shape, wcs, stars, sigma_arcsec=0.5, noise=0.0, seed=0, visit=1,
                  ccd=0, exptime=100.0, sky_var=None):
    """An Exposure with the stars, Gaussian noise of std ``noise`` and matching variance."""
    rng = np.random.default_rng(seed)
    img = render_stars(shape, wcs, stars, sigma_arcsec)
    var = np.full(shape, noise ** 2 if noise > 0 else (sky_var or 1.0), np.float32)
    if noise > 0:
        img = img + rng.normal(0, noise, shape)
    return Exposure(image=img, variance=var, wcs=wcs,
                    info=ExposureInfo(visit=visit, ccd=ccd, exptime=exptime,
                                      filter="HSC-I"))


def measure(img, x, y, r=10):
    """Flux (sum in a square of half-size r) and first-moment centroid around (x, y)."""
    ix, iy = int(round(x)), int(round(y))
    sub = img[iy - r:iy + r + 1, ix - r:ix + r + 1].astype(float)
    yy, xx = np.mgrid[iy - r:iy + r + 1, ix - r:ix + r + 1]
    f = sub.sum()
    return f, (sub * xx).sum() / f, (sub * yy).sum() / f


def test_rendered_star_has_its_flux_and_position():
    shape = (120, 130)
    w = make_wcs(shape, sip=True, rot_deg=20)
    stars = star_list(w, shape, n=4, flux=1000.0)
    img = render_stars(shape, w, stars, 0.5)
    for ra, dec, flux in stars:
        x, y = w.world_to_pixel_values(ra, dec)
        f, cx, cy = measure(img, float(x), float(y), r=14)
        assert abs(f / flux - 1) < 2e-3
        # the SIP distortion skews the profile slightly; centroid within 0.02 px
        assert abs(cx - x) < 0.02 and abs(cy - y) < 0.02
