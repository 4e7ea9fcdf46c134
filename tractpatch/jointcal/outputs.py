"""Fitted models as standard files: TAN-SIP or TPV WCS headers and PhotoCalib Chebyshevs.

The WCS of a CCD is fitted to the model on a pixel grid: CRPIX at the CCD centre, CRVAL
the model's sky position there, CD and SIP ``A/B`` from a linear least-squares fit of
the model's intermediate coordinates (tangent plane at CRVAL), inverse ``AP/BP`` likewise.
The SIP order is raised until the SIP polynomial (evaluated with numpy; all orders come
from one QR factorisation per CCD size) reproduces the model within ``tolerance_mas``
everywhere on a finer check grid; the written WCS is then verified once through
astropy.wcs (wcslib's parser of the written text, ``Wcsprm``) and that maximum
deviation is recorded in ``JCWCSRES`` (mas).

TPV (config ``wcsFormat=tpv``, SCAMP's form): the same tangent-plane offsets as a
polynomial of order 3..7 (the lowest within the tolerance) in the intermediate
coordinates ``(x, y) = CD (p - CRPIX)`` (degrees): ``xi = sum PV1_k x^i y^j``, ``eta =
sum PV2_k y^i x^j`` with the TPV term numbering (k = 0, 1, 2, [3 = r], 4..6, 7..10,
[11 = r^3], ...; the radial terms are not used). A polynomial of order n in pixels is one
of order n in ``(x, y)`` (a linear change of variables), so the order search is the
SIP one; wcslib (astropy.wcs) evaluates it and inverts it iteratively.
"""
from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
from astropy.io import fits
from numpy.polynomial import chebyshev as C

from ..image.fits_bytes import card, hdu_bytes, real
from ..image.photocalib import PhotoCalib
from .astrometry_models import monomials, poly_terms
from .tangent import project
from .threads import blas_single_threaded, single_blas_thread


# one card writer for every output (astropy's Card, verified and re-serialised card by
# card, cost more than fitting the WCS)
_real = real
_card = card


def _sip_cards(ra0, dec0, crpix, cd, a, b, ap, bp, order, inv_order, nx, ny) -> list:
    cards = [_card("NAXIS", 0), _card("WCSAXES", 2),
             _card("CTYPE1", "RA---TAN-SIP"), _card("CTYPE2", "DEC--TAN-SIP"),
             _card("CRPIX1", crpix[0] + 1.0), _card("CRPIX2", crpix[1] + 1.0),
             _card("CRVAL1", float(ra0)), _card("CRVAL2", float(dec0)),
             _card("CUNIT1", "deg"), _card("CUNIT2", "deg")]
    cards += [_card(f"CD{i + 1}_{j + 1}", float(cd[i, j])) for i in range(2) for j in range(2)]
    cards += [_card("RADESYS", "ICRS"), _card("EQUINOX", 2000.0)]
    for name, coef, n in (("A", a, order), ("B", b, order), ("AP", ap, inv_order),
                          ("BP", bp, inv_order)):
        cards.append(_card(f"{name}_ORDER", n))
        for (p, q), c in zip(poly_terms(n), coef):
            if (name in ("A", "B") and p + q < 2) or c == 0:
                continue
            cards.append(_card(f"{name}_{p}_{q}", float(c)))
    cards += [_card("IMAGEW", int(nx)), _card("IMAGEH", int(ny))]
    return cards


def _header(cards) -> fits.Header:
    return fits.Header.fromstring("".join(cards))


@lru_cache(maxsize=8)
def _sip_grids(nx: int, ny: int, max_order: int):
    """Pixel grids of a CCD size and their monomial bases, shared by all its CCDs.

    Returns the fit grid (25 x 25) and check grid (41 x 41) pixels, the reduced QR
    factors of the fit grid's basis (terms of order 1..``max_order`` of the scaled
    offsets from CRPIX, ordered by total degree) and the check grid's basis. The terms
    of order <= k are the leading columns, so the least-squares fit of every order
    comes from the one factorisation: ``R[:n, :n] sol = (Q^T y)[:n]``.
    """
    cx, cy = nx / 2 - 0.5, ny / 2 - 0.5
    s = max(nx, ny) / 2.0

    def grid(n):
        gx, gy = np.meshgrid(np.linspace(-0.5, nx - 0.5, n), np.linspace(-0.5, ny - 0.5, n))
        return gx.ravel(), gy.ravel()

    gx, gy = grid(25)
    cgx, cgy = grid(41)
    q, r = np.linalg.qr(monomials((gx - cx) / s, (gy - cy) / s, max_order)[:, 1:])
    bc = monomials((cgx - cx) / s, (cgy - cy) / s, max_order)[:, 1:]
    out = (gx, gy, cgx, cgy, q, r, bc)
    for a in out:
        a.flags.writeable = False  # cached: shared by every call
    return out


#: WCS forms written (config ``wcsFormat``)
WCS_FORMATS = ("tan-sip", "tpv")
#: TPV polynomial orders searched (SCAMP writes 3..7; wcslib's TPV stops at 7)
TPV_ORDERS = (3, 7)


def fit_tan_sip(pixel_to_sky, nx: int, ny: int, tolerance_mas: float = 1.0,
                max_order: int = 9):
    """A TAN-SIP FITS header reproducing ``pixel_to_sky`` (0-based pixels) over the CCD.

    The forward SIP polynomial of each order 2..``max_order`` is fitted on a 25 x 25
    pixel grid and evaluated on a 41 x 41 check grid with numpy (the SIP mapping is
    ``CD (u + A(u, v), v + B(u, v))`` in the tangent plane at CRVAL, i.e. the fitted
    polynomial itself); the lowest order within ``tolerance_mas`` (else the best) is
    written, with its inverse, and verified once through astropy.wcs.

    Returns
    -------
    header : astropy.io.fits.Header
    max_dev_mas : float
        Largest deviation of the header WCS, as astropy.wcs evaluates it, from the
        mapping on the check grid.
    """
    with single_blas_thread():  # 625 x 54 products: threads only contend
        cards, dev = _fit_wcs(pixel_to_sky, nx, ny, tolerance_mas, max_order, "tan-sip")
    return _header(cards), dev


def fit_tpv(pixel_to_sky, nx: int, ny: int, tolerance_mas: float = 1.0):
    """A TPV FITS header (``RA---TPV``, ``CD``, ``PV1_k``/``PV2_k``) reproducing
    ``pixel_to_sky`` over the CCD: the lowest polynomial order 3..7 within
    ``tolerance_mas`` (else 7), verified through astropy.wcs as :func:`fit_tan_sip`.

    Returns
    -------
    header : astropy.io.fits.Header
    max_dev_mas : float
    """
    with single_blas_thread():
        cards, dev = _fit_wcs(pixel_to_sky, nx, ny, tolerance_mas, TPV_ORDERS[1], "tpv")
    return _header(cards), dev


def _fit_tan_sip(pixel_to_sky, nx, ny, tolerance_mas, max_order):
    return _fit_wcs(pixel_to_sky, nx, ny, tolerance_mas, max_order, "tan-sip")


def _fit_wcs(pixel_to_sky, nx, ny, tolerance_mas, max_order, wcs_format):
    """Cards of the WCS of ``wcs_format`` and its deviation (mas) as astropy reads it."""
    from astropy.wcs import Wcsprm

    if wcs_format not in WCS_FORMATS:
        raise ValueError(f"wcsFormat {wcs_format!r}: choose one of {WCS_FORMATS}")
    tpv = wcs_format == "tpv"
    if tpv:
        max_order = TPV_ORDERS[1]
    cx, cy = nx / 2 - 0.5, ny / 2 - 0.5
    s = max(nx, ny) / 2.0
    gx, gy, cgx, cgy, q, r, bc = _sip_grids(int(nx), int(ny), int(max_order))
    ra, dec = pixel_to_sky(np.concatenate([[cx], gx, cgx]), np.concatenate([[cy], gy, cgy]))
    ra0, dec0 = float(ra[0]), float(dec[0])
    xi, eta = project(ra[1:], dec[1:], ra0, dec0)  # arcsec
    xy = np.column_stack([xi, eta]) / 3600.0  # degrees, as CD
    fit_xy, check_xy = xy[:len(gx)], xy[len(gx):]
    qty = q.T @ fit_xy
    best = None
    for order in range(TPV_ORDERS[0] if tpv else 2, max_order + 1):
        n = len(poly_terms(order)) - 1  # no constant: CRVAL is exact
        sol = np.linalg.solve(r[:n, :n], qty[:n])  # = lstsq of the first n columns
        # the check grid's tangent-plane offsets are (sky - model) to 1e-4 relative
        dev = float(np.hypot(*(bc[:, :n] @ sol - check_xy).T).max()) * 3.6e6
        if best is None or dev < best[1]:
            best = (order, dev, sol)
        if dev < tolerance_mas:
            break
    order, _, sol = best
    if tpv:
        cards = _tpv_from_solution(sol, order, fit_xy, gx - cx, gy - cy, s, ra0, dec0,
                                   (cx, cy), nx, ny)
    else:
        cards = _sip_from_solution(sol, order, fit_xy, gx - cx, gy - cy, s, ra0, dec0,
                                   (cx, cy), nx, ny)
    # the written text, parsed back by wcslib (what astropy.wcs readers get, SIP and TPV
    # included): wcslib's own parser takes 0.1-1.5 ms where building an astropy WCS
    # (its Header and SIP keyword parsing) took 8-20 ms per CCD
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = Wcsprm(header=("".join(cards) + "END".ljust(80)).encode("ascii"))
    cra, cdec = ra[1 + len(gx):], dec[1 + len(gx):]
    wra, wdec = w.p2s(np.column_stack([cgx, cgy]), 0)["world"].T
    dra = (wra - cra + 180.0) % 360.0 - 180.0
    dev = np.hypot(dra * np.cos(np.radians(cdec)), wdec - cdec).max() * 3.6e6
    return cards, float(dev)


def tpv_term_index(order: int) -> np.ndarray:
    """TPV's index ``k`` of each monomial ``x^i y^j`` of :func:`poly_terms` (``order``
    <= 7): terms by total degree, ``x`` power decreasing, with the radial terms
    ``r, r^3, r^5, r^7`` (k = 3, 11, 23, 39) skipped."""
    if order > 7:
        raise ValueError("TPV polynomials stop at order 7")
    k, out = 0, []
    for degree in range(order + 1):
        out += range(k, k + degree + 1)
        k += degree + 1 + (degree % 2)  # an odd degree is followed by its r^degree term
    return np.array(out)


def _tpv_from_solution(sol, order, xy, du, dv, s, ra0, dec0, crpix, nx, ny):
    """TPV cards of a forward fit ``sol`` (scaled pixel monomials of order 1..order):
    CD from its linear terms, ``PV1/PV2`` refitted on the grid in the intermediate
    coordinates ``CD (du, dv)`` (the same polynomial space)."""
    from .astrometry_models import monomials

    lin = sol[:2] / s  # terms (1, 0), (0, 1): d(xi, eta)/d(u, v)
    cd = lin.T  # rows: xi, eta
    x, y = cd @ np.vstack([du, dv])
    t = float(np.max(np.abs(np.concatenate([x, y]))))  # scale: a well-conditioned basis
    B = monomials(x / t, y / t, order)
    coef = np.linalg.lstsq(B, xy, rcond=None)[0]
    coef /= t ** poly_terms(order).sum(axis=1)[:, None]
    terms = poly_terms(order)
    # eta's terms are numbered with x and y exchanged: PV2_k multiplies y^i x^j
    swap = {(int(i), int(j)): m for m, (i, j) in enumerate(terms)}
    pv2 = coef[[swap[(int(j), int(i))] for i, j in terms], 1]
    cards = [_card("NAXIS", 0), _card("WCSAXES", 2),
             _card("CTYPE1", "RA---TPV"), _card("CTYPE2", "DEC--TPV"),
             _card("CRPIX1", crpix[0] + 1.0), _card("CRPIX2", crpix[1] + 1.0),
             _card("CRVAL1", float(ra0)), _card("CRVAL2", float(dec0)),
             _card("CUNIT1", "deg"), _card("CUNIT2", "deg")]
    cards += [_card(f"CD{i + 1}_{j + 1}", float(cd[i, j])) for i in range(2) for j in range(2)]
    cards += [_card("RADESYS", "ICRS"), _card("EQUINOX", 2000.0)]
    for axis, c in ((1, coef[:, 0]), (2, pv2)):
        cards += [_card(f"PV{axis}_{k}", float(v)) for k, v in zip(tpv_term_index(order), c)]
    cards += [_card("IMAGEW", int(nx)), _card("IMAGEH", int(ny))]
    return cards


def _sip_from_solution(sol, order, xy, du, dv, s, ra0, dec0, crpix, nx, ny):
    """The TAN-SIP header cards of a forward fit ``sol`` (scaled monomials of order 1..order,
    columns xi, eta in degrees), with the inverse AP/BP fitted on the same grid."""
    terms = poly_terms(order)[1:]
    cxi, ceta = (sol / s ** terms.sum(axis=1)[:, None]).T
    cd = np.array([[cxi[0], cxi[1]], [ceta[0], ceta[1]]])  # terms (1,0), (0,1)
    cdi = np.linalg.inv(cd)
    ab = cdi @ np.vstack([cxi, ceta])  # SIP: CD @ (u + A, v + B)
    a = np.concatenate([[0.0], ab[0]])
    b = np.concatenate([[0.0], ab[1]])
    a[1:3] = 0.0
    b[1:3] = 0.0
    # inverse: u = U + AP(U, V) with (U, V) = CD^-1 (xi, eta)
    U, V = cdi @ xy.T
    inv_order = min(order + 1, 9)
    Bi = monomials(U / s, V / s, inv_order)
    ti = poly_terms(inv_order)
    isol = np.linalg.lstsq(Bi, np.column_stack([du - U, dv - V]), rcond=None)[0]
    ap, bp = (isol / s ** ti.sum(axis=1)[:, None]).T
    return _sip_cards(ra0, dec0, crpix, cd, a, b, ap, bp, order, inv_order, nx, ny)


def wcs_file_bytes(pixel_to_sky, nx, ny, extra_header=None, tolerance_mas=1.0,
                   max_order=9, wcs_format="tan-sip") -> tuple[bytes, float]:
    """The WCS file of one CCD (a data-less primary HDU, checksums included) as bytes,
    and its deviation from ``pixel_to_sky`` (mas, recorded as ``JCWCSRES``).

    ``extra_header``: a dict of further keywords (e.g. the provenance).
    """
    with single_blas_thread():
        cards, dev = _fit_wcs(pixel_to_sky, nx, ny, tolerance_mas, max_order, wcs_format)
    # a data-less primary HDU may not carry NAXIS1/2 (FITS verification fails):
    # the CCD size is in IMAGEW/IMAGEH (astrometry.net's convention)
    cards = [c for c in cards if not c.startswith(("NAXIS ", "WCSAXES "))]
    cards = [_card("WCSAXES", 2)] + cards
    cards.append(_card("JCWCSRES", dev, "max deviation of this WCS from the fit (mas)"))
    cards += _extra_cards(extra_header)
    return hdu_bytes(cards), dev


def _extra_cards(extra_header) -> list[str]:
    if hasattr(extra_header, "cards"):  # an astropy Header
        return [c.image for c in extra_header.cards]
    out = []
    for k, v in (extra_header or {}).items():
        v, comment = v if isinstance(v, tuple) else (v, "")
        out.append(_card(k, v, comment))
    return out


def write_wcs(path, pixel_to_sky, nx, ny, extra_header=None, tolerance_mas=1.0,
              max_order=9, wcs_format="tan-sip", batch=None) -> float:
    """Write the fitted WCS of one CCD as a primary header; returns the deviation (mas).

    With ``batch`` (a :class:`tractpatch.atomic.AtomicBatch`) the file is staged there
    (visible and durable when the batch commits); else written atomically at once.
    """
    from ..atomic import write_bytes_atomic

    data, dev = wcs_file_bytes(pixel_to_sky, nx, ny, extra_header, tolerance_mas,
                               max_order, wcs_format)
    if batch is not None:
        batch.write_bytes(path, data)
    else:
        write_bytes_atomic(path, data)
    return dev


@blas_single_threaded  # one tiny least-squares fit
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
