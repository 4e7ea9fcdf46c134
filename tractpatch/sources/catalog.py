"""The SRC catalog format (docs/interfaces.md, "SRC catalogs"): write and read.

One BinTable HDU ``SOURCES`` with units in the column metadata; the header carries the
CCD's metadata, the per-CCD summary, the header WCS the sky coordinates were computed
with, and the provenance keywords.
"""
from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..atomic import write_bytes_atomic
from ..errors import UserError
from ..image.fits_bytes import bintable_bytes, card, fits_bytes, hdu_bytes
from ..image.fits_io import open_fits
from ..image.wcs_io import read_wcs, wcs_to_header

#: Flag bits of the ``flags`` column.
FLAG_BITS = {"saturated": 1, "edge": 2, "bad": 4, "cr": 8, "blended": 16, "nodata": 32}
#: The boolean flag columns (``flag_<name>``); no-data is in ``flags`` only.
FLAG_COLUMNS = ("saturated", "edge", "bad", "cr", "blended")

EXTNAME = "SOURCES"


def aperture_column(r: float) -> str:
    """Column name of the aperture flux of radius ``r`` pixels (``flux_ap_6``,
    ``flux_ap_4p5`` for 4.5)."""
    text = f"{float(r):g}".replace(".", "p")
    return f"flux_ap_{text}"


def column_units(radii) -> dict:
    """Unit of every column (FITS ``TUNITn``)."""
    units = {"id": None, "x": "pix", "y": "pix", "x_err": "pix", "y_err": "pix",
             "ra": "deg", "dec": "deg", "flux_psf": "count", "flux_psf_err": "count",
             "mag_inst": "mag", "a": "pix", "b": "pix", "theta": "rad", "fwhm": "pix",
             "snr": None, "is_star": None, "flags": None}
    for r in radii:
        units[aperture_column(r)] = "count"
        units[aperture_column(r) + "_err"] = "count"
    for name in FLAG_COLUMNS:
        units[f"flag_{name}"] = None
    return units


def source_ids(visit: int, ccd: int, n: int) -> np.ndarray:
    """Unique 64-bit IDs: ``(visit * 1000 + ccd) * 1_000_000 + index + 1``."""
    return (np.int64(visit) * 1000 + np.int64(ccd)) * 1_000_000 + np.arange(
        1, n + 1, dtype=np.int64)


def build_table(columns: dict, radii) -> Table:
    """An astropy Table in the SRC column order with units and dtypes."""
    units = column_units(radii)
    order = ["id", "x", "y", "x_err", "y_err", "ra", "dec", "flux_psf", "flux_psf_err"]
    for r in radii:
        order += [aperture_column(r), aperture_column(r) + "_err"]
    order += ["mag_inst", "a", "b", "theta", "fwhm", "snr", "is_star", "flags"]
    order += [f"flag_{n}" for n in FLAG_COLUMNS]
    t = Table()
    for name in order:
        v = np.asarray(columns[name])
        if name == "id":
            v = v.astype(np.int64)
        elif name == "flags":
            v = v.astype(np.int32)
        elif name == "is_star" or name.startswith("flag_"):
            v = v.astype(bool)
        else:
            v = v.astype(np.float64)
        t[name] = v
        if units[name]:
            t[name].unit = units[name]
    return t


def write_src(path, table: Table, header: dict, wcs) -> None:
    """Write an SRC catalog atomically.

    The file is serialised directly (:func:`~tractpatch.image.fits_bytes.bintable_bytes`,
    checksums included): astropy's ``BinTableHDU`` and ``writeto`` walk every column's
    and card's metadata, which cost more than a sixth of measuring the CCD; astropy
    reads the result as it reads its own.

    Parameters
    ----------
    path : Path
    table : Table
        From :func:`build_table`.
    header : dict
        Keywords (VISIT, CCD, FILTER, MJD-OBS, TIMESYS, EXPTIME, NX, NY, PSFFWHM,
        SKYLEVEL, SKYNOISE, provenance, ...): values or ``(value, comment)``.
        Non-finite floats are left out.
    wcs : astropy.wcs.WCS
        The header WCS the sky coordinates were computed with.
    """
    cards, keys = [], set()
    for k, v in header.items():
        v, comment = v if isinstance(v, tuple) else (v, "")
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            continue
        cards.append(card(k if len(k) <= 8 else f"HIERARCH {k}", v, comment))
        keys.add(k)
    if wcs is not None:
        cards += [c.image for c in wcs_to_header(wcs).cards if c.keyword not in keys]
    units = {n: table[n].unit.to_string(format="fits") for n in table.colnames
             if table[n].unit is not None}
    columns = {n: np.asarray(table[n]) for n in table.colnames}
    write_bytes_atomic(path, fits_bytes([hdu_bytes([]), bintable_bytes(
        columns, units, EXTNAME, cards)]))


def read_src(path) -> tuple[Table, fits.Header]:
    """Read an SRC catalog: ``(table, header)``; the WCS is ``read_wcs(header)``."""
    with open_fits(path) as hdul:
        if EXTNAME not in hdul:
            raise UserError(f"{path}: no {EXTNAME} table; not an SRC catalog — rerun "
                            "detectSources.py")
        header = hdul[EXTNAME].header.copy()
        table = Table.read(hdul[EXTNAME])
    return table, header


def src_wcs(header):
    """The header WCS of an SRC catalog."""
    return read_wcs(header, source="SRC header")
