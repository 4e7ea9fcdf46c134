"""Reading and writing FITS WCS (TAN, TAN-SIP, TPV) with the quirks of real headers.

Written headers always use a CD matrix with RADESYS and EQUINOX. ``fix_header_quirks``
repairs headers before astropy reads them:

- obsolete ``PC001001..PC002002`` (Pan-STARRS1, early AIPS) become ``PC1_1..PC2_2``;
- for Pan-STARRS1 (``quirks=('ps1',)``): a missing RADESYS means FK5 J2000 (not the
  FK4/B1950 that the FITS standard's defaults would give for old equinoxes), and times
  written in TAI without TIMESYS get ``TIMESYS = 'TAI'``.
"""
from __future__ import annotations

import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ..errors import UserError

_OLD_PC = {f"PC00{i}00{j}": f"PC{i}_{j}" for i in (1, 2) for j in (1, 2)}


def fix_header_quirks(header: fits.Header, quirks=()) -> fits.Header:
    """Return a copy of ``header`` with known non-standard conventions repaired.

    Parameters
    ----------
    header : astropy.io.fits.Header
        Input header (not modified).
    quirks : iterable of str
        Instrument quirk sets to apply; ``"ps1"`` for Pan-STARRS1 products.
    """
    h = header.copy()
    for old, new in _OLD_PC.items():
        if old in h:
            if new not in h:
                h[new] = h[old]
            del h[old]
    if "ps1" in quirks:
        if "RADESYS" not in h and "RADECSYS" not in h:
            h["RADESYS"] = ("FK5", "PS1: missing RADESYS means FK5")
            h["EQUINOX"] = 2000.0
        if "TIMESYS" not in h and any(k in h for k in ("MJD-OBS", "MJD-END", "DATE-OBS")):
            h["TIMESYS"] = ("TAI", "PS1 times are TAI")
    elif "RADECSYS" in h and "RADESYS" not in h:
        h["RADESYS"] = h["RADECSYS"]
    return h


def read_wcs(header: fits.Header, quirks=(), source: str = "header") -> WCS:
    """A celestial astropy WCS from ``header`` (TAN, TAN-SIP, TPV, ...).

    Raises
    ------
    UserError
        When the header holds no usable celestial WCS; ``source`` names the file.
    """
    h = fix_header_quirks(header, quirks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            w = WCS(h, relax=True)
        except Exception as exc:  # astropy raises several types for broken WCS
            raise UserError(f"{source}: WCS cannot be read ({exc}); "
                            "fix the WCS keywords or supply a WCS with the file") from None
    if not w.has_celestial:
        raise UserError(f"{source}: no celestial WCS (CTYPE/CRVAL/CD keywords missing); "
                        "add a WCS to the header, e.g. with astrometry.net's solve-field")
    w = w.celestial
    if not np.all(np.isfinite(w.wcs.crval)):
        raise UserError(f"{source}: WCS has non-finite CRVAL; fix the header")
    return w


def wcs_to_header(wcs: WCS) -> fits.Header:
    """Standard FITS keywords of ``wcs`` with a CD matrix, RADESYS and EQUINOX.

    TAN-SIP keeps its ``A_/B_`` (and inverse ``AP_/BP_``) polynomials; TPV its ``PVi_j``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = wcs.to_header(relax=True)
    cd = wcs.wcs.get_pc() * wcs.wcs.get_cdelt()[:, None]
    if wcs.wcs.has_cd():
        cd = wcs.wcs.cd
    for k in ("PC1_1", "PC1_2", "PC2_1", "PC2_2", "CDELT1", "CDELT2",
              "CD1_1", "CD1_2", "CD2_1", "CD2_2"):
        h.remove(k, ignore_missing=True)
    for i in range(2):
        for j in range(2):
            h[f"CD{i + 1}_{j + 1}"] = float(cd[i, j])
    if "RADESYS" not in h:
        h["RADESYS"] = "ICRS"
    if h["RADESYS"] in ("FK5", "FK4") and "EQUINOX" not in h:
        h["EQUINOX"] = 2000.0
    if "EQUINOX" not in h:
        h["EQUINOX"] = 2000.0
    # Times are written by the Exposure metadata with TIMESYS; drop astropy's defaults.
    for k in ("MJDREF", "DATEREF", "MJD-OBS", "DATE-OBS"):
        h.remove(k, ignore_missing=True)
    return h


def pixel_corners_to_sky(wcs: WCS, shape: tuple[int, int]) -> np.ndarray:
    """Sky positions (deg) of the four pixel corners of an image of ``shape`` (ny, nx).

    Returns an array ``[[ra, dec] x 4]`` in the order (0,0), (nx,0), (nx,ny), (0,ny) of
    pixel-edge coordinates.
    """
    ny, nx = shape
    x = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    y = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    ra, dec = wcs.all_pix2world(x, y, 0)
    return np.column_stack([np.mod(ra, 360.0), dec])
