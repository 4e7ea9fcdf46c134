"""Fitted models as standard files: TAN-SIP WCS headers and PhotoCalib Chebyshevs.

The WCS of a CCD is fitted to the model on a pixel grid: CRPIX at the CCD centre, CRVAL
the model's sky position there, CD and SIP ``A/B`` from a linear least-squares fit of
the model's intermediate coordinates (tangent plane at CRVAL), inverse ``AP/BP`` likewise.
The SIP order is raised until the written WCS, read back by astropy, reproduces the model
within ``tolerance_mas`` everywhere on a finer check grid; the achieved maximum is
recorded in ``JCWCSRES`` (mas).
"""
from __future__ import annotations

import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from numpy.polynomial import chebyshev as C

from ..image.photocalib import PhotoCalib
from .astrometry_models import monomials, poly_terms
from .tangent import project


def _sip_header(ra0, dec0, crpix, cd, a, b, ap, bp, order, inv_order, nx, ny):
    h = fits.Header()
    h["NAXIS"] = 0
    h["WCSAXES"] = 2
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    h["CRPIX1"], h["CRPIX2"] = crpix[0] + 1.0, crpix[1] + 1.0
    h["CRVAL1"], h["CRVAL2"] = float(ra0), float(dec0)
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    for i in range(2):
        for j in range(2):
            h[f"CD{i + 1}_{j + 1}"] = float(cd[i, j])
    h["RADESYS"], h["EQUINOX"] = "ICRS", 2000.0
    for name, coef, n in (("A", a, order), ("B", b, order), ("AP", ap, inv_order),
                          ("BP", bp, inv_order)):
        h[f"{name}_ORDER"] = n
        for (p, q), c in zip(poly_terms(n), coef):
            if (name in ("A", "B") and p + q < 2) or c == 0:
                continue
            h[f"{name}_{p}_{q}"] = float(c)
    h["IMAGEW"], h["IMAGEH"] = nx, ny
    return h


def fit_tan_sip(pixel_to_sky, nx: int, ny: int, tolerance_mas: float = 1.0,
                max_order: int = 9):
    """A TAN-SIP FITS header reproducing ``pixel_to_sky`` (0-based pixels) over the CCD.

    Returns
    -------
    header : astropy.io.fits.Header
    max_dev_mas : float
        Largest deviation of the header WCS from the mapping on the check grid.
    """
    cx, cy = nx / 2 - 0.5, ny / 2 - 0.5
    ra0, dec0 = pixel_to_sky(np.array([cx]), np.array([cy]))
    ra0, dec0 = float(ra0[0]), float(dec0[0])
    n = 25
    gx, gy = np.meshgrid(np.linspace(-0.5, nx - 0.5, n), np.linspace(-0.5, ny - 0.5, n))
    gx, gy = gx.ravel(), gy.ravel()
    ra, dec = pixel_to_sky(gx, gy)
    xi, eta = project(ra, dec, ra0, dec0)  # arcsec
    xi, eta = xi / 3600.0, eta / 3600.0
    du, dv = gx - cx, gy - cy
    s = max(nx, ny) / 2.0
    cgx, cgy = np.meshgrid(np.linspace(-0.5, nx - 0.5, 41), np.linspace(-0.5, ny - 0.5, 41))
    cgx, cgy = cgx.ravel(), cgy.ravel()
    cra, cdec = pixel_to_sky(cgx, cgy)
    best = None
    for order in range(2, max_order + 1):
        B = monomials(du / s, dv / s, order)[:, 1:]  # no constant: CRVAL is exact
        terms = poly_terms(order)[1:]
        sol = np.linalg.lstsq(B, np.column_stack([xi, eta]), rcond=None)[0]  # one SVD
        cxi, ceta = (sol / s ** terms.sum(axis=1)[:, None]).T
        cd = np.array([[cxi[0], cxi[1]], [ceta[0], ceta[1]]])  # terms (1,0), (0,1)
        cdi = np.linalg.inv(cd)
        full = np.vstack([cxi, ceta])
        ab = cdi @ full  # SIP: CD @ (u + A, v + B)
        a = np.concatenate([[0.0], ab[0]])
        b = np.concatenate([[0.0], ab[1]])
        a[1:3] = 0.0
        b[1:3] = 0.0
        # inverse: u = U + AP(U, V) with (U, V) = CD^-1 (xi, eta)
        U, V = cdi @ np.vstack([xi, eta])
        inv_order = min(order + 1, 9)
        Bi = monomials(U / s, V / s, inv_order)
        ti = poly_terms(inv_order)
        sol = np.linalg.lstsq(Bi, np.column_stack([du - U, dv - V]), rcond=None)[0]
        ap, bp = (sol / s ** ti.sum(axis=1)[:, None]).T
        h = _sip_header(ra0, dec0, (cx, cy), cd, a, b, ap, bp, order, inv_order, nx, ny)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = WCS(h)
        wra, wdec = w.all_pix2world(cgx, cgy, 0)
        dev = np.hypot((wra - cra) * np.cos(np.radians(cdec)), wdec - cdec).max() * 3.6e6
        if best is None or dev < best[1]:
            best = (h, float(dev))
        if dev < tolerance_mas:
            break
    return best


def write_wcs(path, pixel_to_sky, nx, ny, extra_header=None, tolerance_mas=1.0,
              max_order=9) -> float:
    """Write the fitted WCS of one CCD as a primary header; returns the deviation (mas)."""
    from ..atomic import write_fits_atomic

    header, dev = fit_tan_sip(pixel_to_sky, nx, ny, tolerance_mas, max_order)
    hdu = fits.PrimaryHDU()
    hdu.header.update(header)
    # a data-less primary HDU may not carry NAXIS1/2 (FITS verification fails):
    # the CCD size is in IMAGEW/IMAGEH (astrometry.net's convention)
    hdu.header["JCWCSRES"] = (dev, "max deviation of this WCS from the fit (mas)")
    if extra_header:
        hdu.header.update(extra_header)
    write_fits_atomic(path, fits.HDUList([hdu]))
    return dev


def photocalib_from_model(calibration, nx: int, ny: int, order: int,
                          error: float = 0.0) -> PhotoCalib:
    """The exact Chebyshev form over the CCD of a polynomial calibration of ``order``.

    ``calibration(x, y)`` gives nJy/count at 0-based pixels; the bbox is the CCD's pixel
    edges so PhotoCalib's scaled variables equal the model's normalised coordinates.
    """
    bbox = (-0.5, -0.5, nx - 0.5, ny - 0.5)
    if order == 0:
        c = calibration(np.array([nx / 2.0]), np.array([ny / 2.0]))
        return PhotoCalib.constant(float(np.ravel(c)[0]), error, bbox)
    k = order + 2
    nodes = np.cos(np.pi * (np.arange(k) + 0.5) / k)
    uu, vv = np.meshgrid(nodes, nodes)
    uu, vv = uu.ravel(), vv.ravel()
    x = (uu * nx + nx - 1) / 2.0
    y = (vv * ny + ny - 1) / 2.0
    z = calibration(x, y)
    V = C.chebvander2d(uu, vv, [order, order])
    coef = np.linalg.lstsq(V, z, rcond=None)[0].reshape(order + 1, order + 1)
    return PhotoCalib(coef, bbox, error)
