"""The SRC catalog format (docs/interfaces.md, "SRC catalogs"): write and read.

One BinTable HDU ``SOURCES`` with units in the column metadata; the header carries the
CCD's metadata, the per-CCD summary, the header WCS the sky coordinates were computed
with, and the provenance keywords.
"""
from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..atomic import write_fits_atomic
from ..errors import UserError
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


def _table_hdu(table: Table) -> fits.BinTableHDU:
    """The ``SOURCES`` HDU of ``table``: its columns in one structured array, units as
    ``TUNITn``. The same HDU (header and bytes) as ``fits.BinTableHDU(table)`` in 11
    instead of 17 ms CPU for a CCD catalog of 2,200 rows and 31 columns (astropy's
    Table conversion walks every column's metadata)."""
    arr = np.empty(len(table), dtype=[(n, table[n].dtype) for n in table.colnames])
    for n in table.colnames:
        arr[n] = table[n]
    cols = fits.ColDefs(arr)
    for c in cols:
        unit = table[c.name].unit
        if unit is not None:
            c.unit = unit.to_string(format="fits")
    return fits.BinTableHDU.from_columns(cols, name=EXTNAME)


def write_src(path, table: Table, header: dict, wcs) -> None:
    """Write an SRC catalog atomically.

    Parameters
    ----------
    path : Path
    table : Table
        From :func:`build_table`.
    header : dict
        Keywords (VISIT, CCD, FILTER, MJD-OBS, TIMESYS, EXPTIME, NX, NY, PSFFWHM,
        SKYLEVEL, SKYNOISE, provenance, ...). Non-finite floats are left out.
    wcs : astropy.wcs.WCS
        The header WCS the sky coordinates were computed with.
    """
    hdu = _table_hdu(table)
    h = hdu.header
    for k, v in header.items():
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            continue
        h[k if len(k) <= 8 else f"HIERARCH {k}"] = v
    if wcs is not None:
        for card in wcs_to_header(wcs).cards:
            if card.keyword not in h:
                h.append(card)
    write_fits_atomic(path, fits.HDUList([fits.PrimaryHDU(), hdu]))


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
