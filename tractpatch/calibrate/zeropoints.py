"""Zero points of data that arrive calibrated: a header keyword or a per-CCD table.

Conventions
-----------
A zero point ``zp`` is the AB magnitude of a source giving one count (per exposure). The
calibration in nJy per count is then ``10**(-0.4 (zp - 31.4))``: 31.4 is the AB magnitude
of 1 nJy exactly (``m_AB = -2.5 log10(f / 1 erg s^-1 cm^-2 Hz^-1) - 48.60``).

Two sources are supported:

- a header keyword (``zeroPointKeyword``, e.g. 2MASS ``MAGZP``: mag for 1 DN; or HSC
  ``FLUXMAG0``, the counts of a 0-mag source, converted to ``2.5 log10(FLUXMAG0)``);
- a table with one row per CCD (``zeroPointTable``), e.g. the Legacy Surveys
  ``survey-ccds-*.fits.gz`` whose ``ccdzpt`` is the AB magnitude of 1 count per *second*
  for DECam; legacypipe adds ``2.5 log10(exptime)`` to get the per-exposure zero point,
  and so do we when the zero point is per second (``...PerSecond`` options).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import DataQualityError, UserError

#: AB magnitude of a flux of 1 nJy (exact by the definition of the AB system).
AB_MAG_OF_1_NJY = 31.4

#: Keywords holding the counts of a 0-mag AB source (HSC ``FLUXMAG0``) rather than a
#: zero point; the zero point is ``2.5 log10(value)``.
FLUX_KEYWORDS = ("FLUXMAG0",)


def njy_per_count(zero_point: float) -> float:
    """nJy per count for an AB zero point (magnitude of a source of one count)."""
    return float(10.0 ** (-0.4 * (zero_point - AB_MAG_OF_1_NJY)))


def zero_point_of(calib_njy_per_count: float) -> float:
    """AB zero point (mag of one count) of a calibration in nJy per count."""
    return float(AB_MAG_OF_1_NJY - 2.5 * np.log10(calib_njy_per_count))


def per_exposure(zero_point: float, exptime: float | None, per_second: bool,
                 source: str) -> float:
    """The zero point for one count of the exposure.

    Parameters
    ----------
    zero_point : float
        The zero point as given.
    exptime : float or None
        Exposure time (s); needed when ``per_second``.
    per_second : bool
        ``zero_point`` refers to one count per second (``zp + 2.5 log10(exptime)``).
    source : str
        Names the CCD in error messages.
    """
    if not per_second:
        return float(zero_point)
    if exptime is None or not np.isfinite(exptime) or exptime <= 0:
        raise DataQualityError(f"{source}: zero point is per second but the exposure time "
                               f"is {exptime!r}; fix EXPTIME in the registry (re-ingest)")
    return float(zero_point + 2.5 * np.log10(exptime))


def zero_point_from_header(header, keyword: str, source: str) -> float:
    """The value of ``keyword`` in ``header`` as a zero point.

    Raises
    ------
    DataQualityError
        The keyword is missing or not a finite number.
    """
    value = header.get(keyword)
    try:
        zp = float(value)
    except (TypeError, ValueError):
        zp = float("nan")
    if keyword.upper() in FLUX_KEYWORDS:  # counts of a 0-mag source, not a magnitude
        zp = 2.5 * np.log10(zp) if zp > 0 else float("nan")
    if not np.isfinite(zp):
        raise DataQualityError(
            f"{source}: no usable zero-point keyword {keyword} in the header "
            f"(found {value!r}); set --config zeroPointKeyword=<KEY> or zeroPointTable=FILE")
    return zp


@lru_cache(maxsize=4)
def _zero_point_index(path: str, visit_column: str, ccd_column: str,
                      zp_column: str) -> dict:
    """``{(visit, ccd key as str): zero point}`` of a zero-point table (read once)."""
    from astropy.table import Table

    p = Path(path)
    if not p.exists():
        raise UserError(f"zeroPointTable {path}: no such file; give the survey-ccds table")
    try:
        t = Table.read(p, hdu=1) if p.suffix != ".ecsv" else Table.read(p)
    except Exception as exc:  # astropy raises many types for unreadable tables
        raise UserError(f"zeroPointTable {path}: not a readable table ({exc})") from None
    missing = [c for c in (visit_column, ccd_column, zp_column) if c not in t.colnames]
    if missing:
        raise UserError(f"zeroPointTable {path}: no column(s) {', '.join(missing)}; set "
                        "zeroPointTableVisitColumn/zeroPointTableCcdColumn/zeroPointColumn")
    visits = np.asarray(t[visit_column]).astype(np.int64)
    ccds = [(c.decode() if isinstance(c, bytes) else str(c)).strip()
            for c in np.asarray(t[ccd_column])]
    zps = np.asarray(t[zp_column], dtype=np.float64)
    return {(int(v), c): float(z) for v, c, z in zip(visits, ccds, zps)}


def check_table(config) -> None:
    """Read the configured zero-point table once (a UserError for a bad path/columns)."""
    if config.zeroPointTable:
        _zero_point_index(str(config.zeroPointTable), config.zeroPointTableVisitColumn,
                          config.zeroPointTableCcdColumn, config.zeroPointColumn)


def zero_point_from_table(config, row: dict, source: str) -> float:
    """The zero point of registry ``row`` from the configured table (as given there).

    The row is matched by visit (``zeroPointTableVisitColumn``, e.g. ``expnum``) and by
    the registry key ``zeroPointTableCcdKey`` (``ccdname`` or ``ccd``) against
    ``zeroPointTableCcdColumn``.
    """
    index = _zero_point_index(str(config.zeroPointTable), config.zeroPointTableVisitColumn,
                              config.zeroPointTableCcdColumn, config.zeroPointColumn)
    key = (int(row["visit"]), str(row.get(config.zeroPointTableCcdKey)).strip())
    zp = index.get(key)
    if zp is None or not np.isfinite(zp):
        raise DataQualityError(
            f"{source}: no zero point for {config.zeroPointTableVisitColumn}={key[0]} "
            f"{config.zeroPointTableCcdColumn}={key[1]} in {config.zeroPointTable}; "
            "add the CCD to the table or leave it out")
    return zp


def raw_header(repo, row: dict):
    """The ingested file's header of registry ``row`` (image HDU over primary)."""
    from ..image.fits_io import _pick_image_hdu, merged_header, open_fits

    path = repo.exposure_path(row)
    hdu = row.get("hdu")
    if hdu is not None:
        try:
            hdu = int(hdu)
        except ValueError:
            pass
    with open_fits(path) as hdul:
        return merged_header(hdul, _pick_image_hdu(hdul, hdu, path))


def header_zero_point(config, repo, row: dict) -> tuple[float, str]:
    """The per-exposure zero point of ``row`` and a description of where it came from.

    Uses ``zeroPointTable`` when configured, else the header keyword
    ``zeroPointKeyword``.
    """
    source = f"visit={row['visit']} ccd={row['ccd']}"
    if config.zeroPointTable:
        zp = zero_point_from_table(config, row, source)
        zp = per_exposure(zp, row.get("expTime"), config.zeroPointTablePerSecond, source)
        return zp, f"{config.zeroPointTable}[{config.zeroPointColumn}]"
    header = raw_header(repo, row)
    zp = zero_point_from_header(header, config.zeroPointKeyword, source)
    exptime = row.get("expTime")
    zp = per_exposure(zp, exptime, config.zeroPointKeywordPerSecond, source)
    return zp, f"{_relative(repo, repo.exposure_path(row))}[{config.zeroPointKeyword}]"


def _relative(repo, path) -> str:
    try:
        return str(Path(path).relative_to(repo.root))
    except ValueError:
        return str(path)
