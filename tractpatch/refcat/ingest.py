"""Ingest FITS, CSV or Parquet tables into a sharded reference catalog.

Stored schema (LSST refcat units, except where noted; one row per star):

==================  =======  =====================================================
column              unit     meaning
==================  =======  =====================================================
``id``              --       int64 source id (from ``id_name``, else sequential)
``coord_ra``        rad      ICRS right ascension at ``epoch`` (LSST: radians)
``coord_dec``       rad      ICRS declination at ``epoch``
``coord_raErr``     rad      error of RA*cos(dec), an angle on the sky (NaN: unknown)
``coord_decErr``    rad      error of Dec
``pm_ra``           mas/yr   proper motion in RA*cos(dec) (LSST uses rad/yr; we keep
                             the catalogs' mas/yr); 0 where unknown
``pm_dec``          mas/yr   proper motion in Dec; 0 where unknown
``pm_raErr``        mas/yr   errors of the proper motions (NaN: unknown)
``pm_decErr``       mas/yr
``pm_flag``         --       True where the proper motion is unknown (set to 0)
``parallax``        mas      parallax (NaN: unknown; LSST uses rad)
``parallaxErr``     mas
``epoch``           d        epoch of coord_ra/coord_dec as MJD (TAI)
``<band>_flux``     nJy      flux of each band (AB magnitudes converted)
``<band>_fluxErr``  nJy      its error
==================  =======  =====================================================

Input tables are mapped with :class:`~tractpatch.refcat.config.IngestRefCatConfig`; an
LSST-format refcat (``coord_ra``/``coord_dec``, ``<band>_flux`` in nJy) is read directly.
The shards are written to a staging directory that replaces ``ROOT/ref_cats/<name>`` in
one rename, so a failed ingest leaves no partial catalog.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.table import Table, vstack
from astropy.time import Time

from .. import __version__
from ..errors import UserError
from .config import IngestRefCatConfig
from .shards import (FORMAT_VERSION, REFCAT_DIR, ShardScheme, catalog_dir,
                     write_catalog_config, write_shards)

__all__ = ["IngestRefCatConfig", "ingest_catalog", "read_input_table", "convert_table",
           "catalog_summary", "mag_to_njy"]

log = logging.getLogger("tractpatch.refcat")

#: AB magnitude of 1 nJy: 2.5*log10(3631 Jy / 1 nJy) (AB zero point 3631 Jy).
AB_NJY_ZERO = 31.4
_MAG_ERR_TO_REL = np.log(10.0) / 2.5  # d(flux)/flux per magnitude


def mag_to_njy(mag):
    """AB magnitude -> flux in nJy."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - AB_NJY_ZERO))


def njy_to_mag(flux):
    """Flux in nJy -> AB magnitude (NaN for non-positive flux)."""
    f = np.asarray(flux, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(f > 0, -2.5 * np.log10(np.where(f > 0, f, 1.0)) + AB_NJY_ZERO,
                        np.nan)


# --- reading -----------------------------------------------------------------------
def read_input_table(path) -> Table:
    """Read a FITS (first table HDU), CSV or Parquet file; one-line error otherwise."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    name = path.name.lower()
    try:
        if name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz", ".fts")):
            return Table.read(path, character_as_bytes=False)
        if name.endswith((".csv", ".csv.gz")):
            return Table.read(path, format="ascii.csv")
        if name.endswith((".parquet", ".pq")):
            return _read_parquet(path)
    except UserError:
        raise
    except ImportError as exc:
        raise UserError(f"{path}: cannot read Parquet ({_one_line(exc)}); install pyarrow "
                        "into the environment") from None
    except Exception as exc:  # astropy raises many types for unreadable files
        raise UserError(f"{path}: cannot read the table ({exc.__class__.__name__}: "
                        f"{_one_line(exc)}); give a FITS, CSV or Parquet table") from None
    raise UserError(f"{path}: unknown table format; give a .fits, .csv or .parquet file")


def _one_line(exc: BaseException) -> str:
    """The last non-empty line of an exception's message (astropy's span lines)."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    return lines[-1] if lines else exc.__class__.__name__


def _read_parquet(path: Path) -> Table:
    """Parquet through pyarrow directly (astropy's reader also wants pandas)."""
    import pyarrow.parquet as pq

    pt = pq.read_table(path)
    return Table({n: pt.column(n).to_numpy(zero_copy_only=False) for n in pt.column_names})


def _col(table: Table, name: str, key: str, source: str) -> np.ndarray:
    """Column ``name`` as float64 with masked entries as NaN; error names the key."""
    if name not in table.colnames:
        shown = ", ".join(table.colnames[:15]) + (" ..." if len(table.colnames) > 15 else "")
        raise UserError(f"{source}: no column {name!r} (config {key}); set --config "
                        f"{key}=<column> to one of: {shown}")
    c = table[name]
    data = np.ma.filled(np.ma.asarray(c).astype(float), np.nan)
    return np.asarray(data, dtype=float)


def _unit_of(table: Table, name: str, default: str) -> u.UnitBase:
    """The column's unit when it is set and of the expected kind, else ``default``."""
    default = u.Unit(default)
    unit = table[name].unit
    if unit in (None, ""):
        return default
    try:
        unit = u.Unit(unit)
        unit.to(default)
    except (ValueError, TypeError, u.UnitsError):
        log.warning("column %r: unit %r is not convertible to %s; using %s", name,
                    str(table[name].unit), default, default)
        return default
    return unit


# --- conversion --------------------------------------------------------------------
def convert_table(table: Table, config: IngestRefCatConfig, source: str = "input") -> Table:
    """Map an input table onto the stored schema (see the module docstring)."""
    fmt = config.input_format
    if fmt == "auto":
        lsst = ("coord_ra" in table.colnames and "coord_dec" in table.colnames
                and config.ra_name not in table.colnames)
        fmt = "lsst" if lsst else "table"
    out = _convert_lsst(table, source) if fmt == "lsst" else _convert_mapped(table, config,
                                                                              source)
    bad = ~(np.isfinite(out["coord_ra"]) & np.isfinite(out["coord_dec"]))
    if bad.any():
        log.warning("%s: %d rows without a position dropped", source, int(bad.sum()))
        out = out[~bad]
    return out


def _empty_output(n: int) -> Table:
    t = Table()
    t["id"] = np.zeros(n, dtype=np.int64)
    for c, unit in (("coord_ra", u.rad), ("coord_dec", u.rad), ("coord_raErr", u.rad),
                    ("coord_decErr", u.rad), ("pm_ra", u.mas / u.yr),
                    ("pm_dec", u.mas / u.yr), ("pm_raErr", u.mas / u.yr),
                    ("pm_decErr", u.mas / u.yr)):
        t[c] = np.full(n, np.nan)
        t[c].unit = unit
    t["pm_flag"] = np.ones(n, dtype=bool)
    for c in ("parallax", "parallaxErr"):
        t[c] = np.full(n, np.nan)
        t[c].unit = u.mas
    t["epoch"] = np.full(n, np.nan)
    t["epoch"].unit = u.day
    return t


def _finish_pm(t: Table) -> None:
    """Unknown proper motions: 0 with pm_flag set (so propagation leaves them put)."""
    known = np.isfinite(t["pm_ra"]) & np.isfinite(t["pm_dec"])
    t["pm_flag"] = ~known
    t["pm_ra"][~known] = 0.0
    t["pm_dec"][~known] = 0.0


def _convert_mapped(table: Table, c: IngestRefCatConfig, source: str) -> Table:
    n = len(table)
    t = _empty_output(n)
    if c.id_name:
        if c.id_name not in table.colnames:
            _col(table, c.id_name, "id_name", source)
        t["id"] = np.asarray(table[c.id_name], dtype=np.int64)
        t.meta["has_ids"] = True
    ra = _col(table, c.ra_name, "ra_name", source)
    dec = _col(table, c.dec_name, "dec_name", source)
    # a unit in the column metadata wins over coord_unit (FITS tables carry one)
    t["coord_ra"] = (ra * _unit_of(table, c.ra_name, c.coord_unit)).to_value(u.rad)
    t["coord_dec"] = (dec * _unit_of(table, c.dec_name, c.coord_unit)).to_value(u.rad)
    t["coord_ra"] = np.mod(t["coord_ra"], 2 * np.pi)
    if np.any(np.abs(t["coord_dec"]) > np.pi / 2 + 1e-12):
        raise UserError(f"{source}: declinations beyond +-90 deg in {c.dec_name!r}; check "
                        "coord_unit (deg or rad)")
    eu = u.Unit(c.coord_err_unit)
    for key, name, out in (("ra_err_name", c.ra_err_name, "coord_raErr"),
                           ("dec_err_name", c.dec_err_name, "coord_decErr")):
        if name:
            t[out] = (_col(table, name, key, source) * eu).to_value(u.rad)
    if c.pm_ra_name or c.pm_dec_name:
        if not (c.pm_ra_name and c.pm_dec_name):
            raise UserError(f"{source}: set both pm_ra_name and pm_dec_name (or neither)")
        t["pm_ra"] = _col(table, c.pm_ra_name, "pm_ra_name", source) * c.pm_scale
        t["pm_dec"] = _col(table, c.pm_dec_name, "pm_dec_name", source) * c.pm_scale
        if c.epoch_name is None and c.epoch_value is None:
            raise UserError(f"{source}: proper motions need the epoch of the positions; "
                            "set --config epoch_name=<column> (or epoch_value=...)")
    for key, name, out in (("pm_ra_err_name", c.pm_ra_err_name, "pm_raErr"),
                           ("pm_dec_err_name", c.pm_dec_err_name, "pm_decErr")):
        if name:
            t[out] = _col(table, name, key, source) * c.pm_scale
    _finish_pm(t)
    if c.parallax_name:
        t["parallax"] = _col(table, c.parallax_name, "parallax_name", source)
    if c.parallax_err_name:
        t["parallaxErr"] = _col(table, c.parallax_err_name, "parallax_err_name", source)
    t["epoch"] = _epochs(table, c, source)
    for mag_name in c.mag_column_list:
        band = c.band_name_map.get(mag_name, mag_name)
        mag = _col(table, mag_name, "mag_column_list", source)
        flux = mag_to_njy(mag)
        if mag_name in c.mag_err_column_map:
            merr = _col(table, c.mag_err_column_map[mag_name], "mag_err_column_map", source)
            ferr = flux * merr * _MAG_ERR_TO_REL
        elif mag_name in c.mag_snr_column_map:
            snr = _col(table, c.mag_snr_column_map[mag_name], "mag_snr_column_map", source)
            with np.errstate(divide="ignore", invalid="ignore"):
                ferr = np.where(snr > 0, flux / snr, np.nan)
        else:
            ferr = np.full(n, np.nan)
        t[f"{band}_flux"] = flux
        t[f"{band}_flux"].unit = u.nJy
        t[f"{band}_fluxErr"] = ferr
        t[f"{band}_fluxErr"].unit = u.nJy
    for name in c.extra_col_names:
        if name not in table.colnames:
            _col(table, name, "extra_col_names", source)
        t[name] = table[name]
    return t


def _epochs(table: Table, c: IngestRefCatConfig, source: str) -> np.ndarray:
    n = len(table)
    if c.epoch_name:
        vals = table[c.epoch_name]
        if vals.dtype.kind in "USO":
            raw = np.asarray(vals, dtype=str)
        else:
            raw = _col(table, c.epoch_name, "epoch_name", source)
    elif c.epoch_value is not None:
        raw = np.full(n, c.epoch_value)
    else:
        return np.full(n, np.nan)
    # catalogs hold few distinct epochs: convert those only (time-scale changes are slow)
    values, inverse = np.unique(raw, return_inverse=True)
    try:
        mjd = Time(values, format=c.epoch_format, scale=c.epoch_scale).tai.mjd[inverse]
    except Exception as exc:
        raise UserError(f"{source}: epochs in {c.epoch_name or 'epoch_value'!r} are not "
                        f"valid {c.epoch_format!r} times ({_one_line(exc)}); set --config "
                        "epoch_format=jyear|decimalyear|mjd|jd|isot") from None
    return np.asarray(mjd, dtype=float)


def _convert_lsst(table: Table, source: str) -> Table:
    """An LSST refcat: coord_* (rad), <band>_flux (nJy), pm_* (rad/yr), parallax (rad)."""
    n = len(table)
    t = _empty_output(n)
    if "id" in table.colnames:
        t["id"] = np.asarray(table["id"], dtype=np.int64)
        t.meta["has_ids"] = True
    for c in ("coord_ra", "coord_dec", "coord_raErr", "coord_decErr"):
        if c in table.colnames:
            t[c] = (_col(table, c, "input_format", source)
                    * _unit_of(table, c, "rad")).to_value(u.rad)
    t["coord_ra"] = np.mod(t["coord_ra"], 2 * np.pi)
    for c in ("pm_ra", "pm_dec", "pm_raErr", "pm_decErr"):
        if c in table.colnames:
            t[c] = (_col(table, c, "input_format", source)
                    * _unit_of(table, c, "rad/yr")).to_value(u.mas / u.yr)
    if "pm_flag" in table.colnames:
        flagged = np.asarray(table["pm_flag"], dtype=bool)
        t["pm_ra"][flagged] = np.nan
    _finish_pm(t)
    for c in ("parallax", "parallaxErr"):
        if c in table.colnames:
            t[c] = (_col(table, c, "input_format", source)
                    * _unit_of(table, c, "rad")).to_value(u.mas)
    if "epoch" in table.colnames:
        t["epoch"] = _col(table, "epoch", "input_format", source)
    bands = [c[:-5] for c in table.colnames
             if c.endswith("_flux") and table[c].ndim == 1]
    if not bands:
        raise UserError(f"{source}: LSST-format refcat without <band>_flux columns; give "
                        "--config input_format=table and the column names")
    for b in bands:
        t[f"{b}_flux"] = (_col(table, f"{b}_flux", "input_format", source)
                          * _unit_of(table, f"{b}_flux", "nJy")).to_value(u.nJy)
        t[f"{b}_flux"].unit = u.nJy
        if f"{b}_fluxErr" in table.colnames:
            t[f"{b}_fluxErr"] = (_col(table, f"{b}_fluxErr", "input_format", source)
                                 * _unit_of(table, f"{b}_fluxErr", "nJy")).to_value(u.nJy)
        else:
            t[f"{b}_fluxErr"] = np.full(n, np.nan)
        t[f"{b}_fluxErr"].unit = u.nJy
    return t


def bands_of(table: Table) -> list[str]:
    """Band names of the ``<band>_flux`` columns of a stored-schema table."""
    return [c[:-5] for c in table.colnames if c.endswith("_flux")]


# --- the catalog --------------------------------------------------------------------
def catalog_summary(table: Table) -> dict:
    """What the loader needs to know without reading shards: epochs, largest motion."""
    pm = np.hypot(np.asarray(table["pm_ra"]), np.asarray(table["pm_dec"]))
    ep = np.asarray(table["epoch"], dtype=float)
    ep = ep[np.isfinite(ep)]
    return {
        "n_stars": int(len(table)),
        "bands": bands_of(table),
        "has_proper_motion": bool((~np.asarray(table["pm_flag"])).any()),
        "max_pm_mas_yr": float(pm.max()) if len(pm) else 0.0,
        "epoch_mjd_range": [float(ep.min()), float(ep.max())] if len(ep) else None,
    }


def merge_summaries(a: dict | None, b: dict) -> dict:
    """Summary of a catalog after adding stars summarised by ``b`` (fetch, by tile)."""
    if not a:
        return dict(b)
    rng = [r for r in (a.get("epoch_mjd_range"), b.get("epoch_mjd_range")) if r]
    return {
        "n_stars": a["n_stars"] + b["n_stars"],
        "bands": a["bands"] or b["bands"],
        "has_proper_motion": a["has_proper_motion"] or b["has_proper_motion"],
        "max_pm_mas_yr": max(a["max_pm_mas_yr"], b["max_pm_mas_yr"]),
        "epoch_mjd_range": ([min(r[0] for r in rng), max(r[1] for r in rng)]
                            if rng else None),
    }


def shard_header(name: str, config: IngestRefCatConfig) -> dict:
    return {"REFCAT": name, "TASK": "ingestReferenceCatalog",
            "CFGHASH": config.config_hash(), "TPVERSN": __version__}


def catalog_info(name: str, config: IngestRefCatConfig, summary: dict,
                 sources: list[str]) -> dict:
    """The content of ``config.yaml``."""
    import json

    return {
        "name": name,
        "format_version": FORMAT_VERSION,
        "photometric_system": config.photometric_system or name,
        "shard_scheme": ShardScheme(config.shard_nside).to_dict(),
        **summary,
        "units": {"coord": "rad", "coord_err": "rad", "pm": "mas/yr", "parallax": "mas",
                  "epoch": "MJD (TAI)", "flux": "nJy"},
        "sources": sources,
        "ingest_config": json.loads(config.model_dump_json()),
    }


def ingest_catalog(root, files, name: str, config: IngestRefCatConfig | None = None,
                   overwrite: bool = False) -> int:
    """Ingest ``files`` into ``ROOT/ref_cats/<name>/``; return the number of stars.

    Parameters
    ----------
    root : str or Path
        Repository root.
    files : list of str or Path
        FITS, CSV or Parquet tables (all read with the same ``config``).
    name : str
        Catalog name (directory under ``ref_cats``).
    config : IngestRefCatConfig, optional
        Column mapping and shard level; default: ``ra``/``dec`` in degrees, no magnitudes.
    overwrite : bool
        Replace an existing catalog of that name (otherwise a UserError).

    Returns
    -------
    int
        Number of stars stored (rows with a repeated ``id`` count once).
    """
    config = config or IngestRefCatConfig()
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"--name {name!r}: give a plain catalog name such as gaia_dr3")
    files = [Path(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
    if not files:
        raise UserError("no input files given")
    final = catalog_dir(root, name)
    if final.exists() and not overwrite:
        raise UserError(f"reference catalog {name!r} already exists in {final.parent}; "
                        "use --overwrite to replace it or choose another --name")
    parts = []
    next_id = 0
    for f in files:
        t = convert_table(read_input_table(f), config, str(f))
        if not t.meta.get("has_ids"):
            t["id"] = np.arange(next_id, next_id + len(t), dtype=np.int64)
            next_id += len(t)
        parts.append(t)
    table = vstack(parts, join_type="outer", metadata_conflicts="silent") \
        if len(parts) > 1 else parts[0]
    table = _fill_outer(table)
    _, first = np.unique(np.asarray(table["id"]), return_index=True)
    if len(first) < len(table):
        log.info("%d rows repeat an id already read and were dropped",
                 len(table) - len(first))
        table = table[np.sort(first)]
    if len(table) == 0:
        raise UserError(f"{', '.join(map(str, files))}: no stars to ingest")
    scheme = ShardScheme(config.shard_nside)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}.", dir=parent))
    try:
        n_shards = write_shards(staging, table, scheme, shard_header(name, config))
        write_catalog_config(staging, catalog_info(
            name, config, catalog_summary(table), [str(Path(f).resolve()) for f in files]))
        _swap_in(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("ingested %d stars into %d shards of %s/%s", len(table), n_shards,
             REFCAT_DIR, name)
    return len(table)


def _fill_outer(table: Table) -> Table:
    """Bands missing from some inputs: NaN instead of masked."""
    for c in table.colnames:
        if hasattr(table[c], "mask") and table[c].dtype.kind == "f":
            table[c] = np.ma.filled(table[c], np.nan)
        elif hasattr(table[c], "mask") and c == "pm_flag":
            table[c] = np.ma.filled(table[c], True)
    return table


def _swap_in(staging: Path, final: Path) -> None:
    """Replace ``final`` by ``staging`` with renames (the old one removed afterwards)."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}.", dir=final.parent))
        old.rmdir()
        final.rename(old)
    staging.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
