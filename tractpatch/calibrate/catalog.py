"""Applying a CCD's calibration to its SRC catalog (the CALSRC).

Sky coordinates are recomputed from ``x, y`` (0-based pixels) with the fitted WCS. With
``apply_calib`` every instrumental flux column (``flux_psf`` and the apertures
``flux_ap_<r>``) gets an nJy column (``<name>_njy``, ``<name>_njy_err``), the calibration
evaluated at each source's position, and an AB magnitude with its error (``mag_psf``,
``mag_psf_err``, ``mag_ap_<r>``, ``mag_ap_<r>_err``; NaN for non-positive fluxes). The
instrumental columns are kept either way.
"""
from __future__ import annotations

import re

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from ..errors import DataQualityError
from ..image.wcs_io import wcs_to_header
from .zeropoints import AB_MAG_OF_1_NJY

#: 2.5 / ln(10): magnitude error per fractional flux error.
MAG_PER_FRAC = 2.5 / np.log(10.0)

_FLUX_COL = re.compile(r"^flux_(psf|ap_[0-9.p]+)$")

#: Header keywords of a celestial WCS, removed before the fitted WCS is written.
_WCS_KEY = re.compile(r"^(WCSAXES|CTYPE\d|CUNIT\d|CRVAL\d|CRPIX\d|CDELT\d|CROTA\d|CD\d_\d|"
                      r"PC\d_\d|PC00\d00\d|PV\d_\d+|LONPOLE|LATPOLE|RADESYS|RADECSYS|"
                      r"EQUINOX|EPOCH|[AB]P?_\d+_\d+|[AB]P?_ORDER|[AB]P?_DMAX)$")


def flux_columns(table: Table) -> list[str]:
    """The instrumental flux columns (``flux_psf``, ``flux_ap_<r>``) of a SRC table."""
    return [c for c in table.colnames if _FLUX_COL.match(c)]


def calibrate_catalog(table: Table, wcs: WCS, photo_calib, apply_calib: bool = True,
                      source: str = "catalog") -> Table:
    """A calibrated copy of the SRC ``table``.

    Parameters
    ----------
    table : astropy.table.Table
        SRC catalog (``x``, ``y`` 0-based pixels; fluxes in counts).
    wcs : astropy.wcs.WCS
        Pixel → sky map to recompute ``ra``, ``dec``.
    photo_calib : PhotoCalib
        nJy per count; used when ``apply_calib``.
    apply_calib : bool
        Add nJy fluxes and AB magnitudes.
    source : str
        Names the catalog in error messages.

    Returns
    -------
    astropy.table.Table
    """
    for col in ("x", "y"):
        if col not in table.colnames:
            raise DataQualityError(f"{source}: no column {col!r}; regenerate the SRC "
                                   "catalog with detectSources.py")
    out = table.copy(copy_data=True)
    x = np.asarray(out["x"], dtype=np.float64)
    y = np.asarray(out["y"], dtype=np.float64)
    ra, dec = wcs.all_pix2world(x, y, 0) if len(out) else (x.copy(), y.copy())
    out["ra"] = np.mod(ra, 360.0) * u.deg
    out["dec"] = np.asarray(dec) * u.deg
    if apply_calib:
        calib = photo_calib.evaluate(x, y) if len(out) else np.zeros(0)
        for col in flux_columns(table):
            _add_calibrated(out, col, calib)
    return out


def _add_calibrated(out: Table, col: str, calib: np.ndarray) -> None:
    """Add ``<col>_njy``, ``<col>_njy_err`` and the magnitude columns of ``col``."""
    flux = np.asarray(out[col], dtype=np.float64)
    err_col = f"{col}_err"
    err = (np.asarray(out[err_col], dtype=np.float64) if err_col in out.colnames
           else np.full(flux.shape, np.nan))
    njy = flux * calib
    njy_err = err * np.abs(calib)
    out[f"{col}_njy"] = njy * u.nJy
    out[f"{col}_njy_err"] = njy_err * u.nJy
    with np.errstate(divide="ignore", invalid="ignore"):
        good = njy > 0
        mag = np.where(good, -2.5 * np.log10(np.where(good, njy, 1.0)) + AB_MAG_OF_1_NJY,
                       np.nan)
        mag_err = np.where(good, MAG_PER_FRAC * njy_err / np.where(good, njy, 1.0), np.nan)
    name = "mag_" + col[len("flux_"):]
    # AB magnitudes; plain ``mag`` units so that every FITS reader parses TUNIT.
    out[name] = mag * u.mag
    out[f"{name}_err"] = mag_err * u.mag


def replace_wcs_keywords(header: fits.Header, wcs: WCS) -> fits.Header:
    """A copy of ``header`` with its WCS keywords replaced by those of ``wcs``."""
    h = header.copy()
    for key in [k for k in h.keys() if _WCS_KEY.match(k)]:
        h.remove(key, ignore_missing=True, remove_all=True)
    h.update(wcs_to_header(wcs))
    return h


def read_src(path) -> tuple[Table, fits.Header]:
    """The ``SOURCES`` table of a SRC file and its header."""
    try:
        with fits.open(path) as hdul:
            hdu = hdul["SOURCES"] if "SOURCES" in hdul else hdul[1]
            header = hdu.header.copy()
            table = Table.read(hdu)
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise DataQualityError(f"{path}: unreadable SRC catalog ({exc}); rerun "
                               "detectSources.py for this CCD") from None
    return table, header


def src_hdu(table: Table, header: fits.Header, extra_header: dict) -> fits.BinTableHDU:
    """The ``SOURCES`` BinTable HDU of a CALSRC: ``header`` (minus the table structure
    keywords, which astropy rewrites) plus ``extra_header``."""
    hdu = fits.table_to_hdu(table)
    hdu.name = "SOURCES"
    skip = re.compile(r"^(XTENSION|BITPIX|NAXIS\d?|PCOUNT|GCOUNT|TFIELDS|T(TYPE|FORM|UNIT|"
                      r"DIM|NULL|SCAL|ZERO|DISP)\d+|EXTNAME|CHECKSUM|DATASUM|)$")
    for card in header.cards:
        if skip.match(card.keyword) or card.keyword in ("COMMENT", "HISTORY"):
            continue
        hdu.header[card.keyword] = (card.value, card.comment)
    for k, v in extra_header.items():
        hdu.header[k] = v
    return hdu
