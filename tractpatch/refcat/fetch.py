"""Fetch a reference catalog from an archive (astroquery) into ``ROOT/ref_cats/<name>``.

Services (``--name``):

- ``gaia_dr3``: ESA Gaia archive TAP (``gaiadr3.gaia_source``): positions and errors,
  proper motions, parallax at ref_epoch (J2016.0 TCB), G/BP/RP stored as
  ``phot_g_mean``, ``phot_bp_mean``, ``phot_rp_mean`` fluxes (LSST's band names; Gaia
  magnitudes are Vega-based and converted as if AB, as LSST's Gaia refcats are used for
  astrometry only).
- ``ps1_dr2``: MAST Pan-STARRS1 DR2 mean-object catalog (``MeanObjectView``) with
  ``nDetections > 1`` asked of the server, then the quality cuts documented for PS1 DR2
  mean objects (ESA's ``panstarrs1_original_valid`` selection from the STScI tables):
  objInfoFlag GOOD (33554432) set, mean astrometry measured (524288 unset) and not
  taken from the stack (1048576 unset), RA/Dec errors below 1 arcsec, at least one
  magnitude; plus STScI's point-source cut iMeanPSFMag - iMeanKronMag < 0.05 where
  both are measured. Bands g r i z y (PSF magnitudes, AB), epoch epochMean (MJD).
- ``sdss_dr16``: SDSS SkyServer SQL, ``Star`` view with ``clean = 1``: PSF magnitudes
  u g r i z (u - 0.04 and z + 0.02 to AB, as SDSS recommends), epoch of observation.

The sky area is cut into HEALPix tiles (nested, ``tile_nside``, each inside one shard);
every tile is one query, stored in its shard at once and recorded as done in
``config.yaml``, so an interrupted fetch resumes where it stopped and a repeated one
fetches nothing. Before any query the service's host is probed with a short timeout:
without network the command fails at once, pointing to ingestReferenceCatalog.py.
"""
from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import Callable

import astropy.units as u
import numpy as np
from astropy.table import Table

from ..errors import UserError
from .config import IngestRefCatConfig
from .ingest import (_one_line, catalog_info, catalog_summary, convert_table,
                     merge_summaries, shard_header)
from .loader import angular_separation
from .shards import (ShardScheme, catalog_dir, read_catalog_config, write_catalog_config,
                     write_shards)

log = logging.getLogger("tractpatch.refcat.fetch")

NO_NETWORK_HINT = ("fetchReferenceCatalog.py needs the network; without it, ingest a "
                   "local file: ingestReferenceCatalog.py ROOT FILE --name NAME")


@dataclass
class Service:
    """An archive catalog: where it is, how to query a cone, how to read the answer."""

    name: str
    host: str
    port: int
    query: Callable[[float, float, float, float], Table]  # ra, dec, radius deg, timeout
    config: IngestRefCatConfig
    cuts: Callable[[Table], Table] | None = None
    description: str = ""


# --- Gaia DR3 -------------------------------------------------------------------------
_GAIA_COLUMNS = ("source_id, ra, dec, ra_error, dec_error, pmra, pmra_error, pmdec, "
                 "pmdec_error, parallax, parallax_error, ref_epoch, phot_g_mean_mag, "
                 "phot_g_mean_flux_over_error, phot_bp_mean_mag, "
                 "phot_bp_mean_flux_over_error, phot_rp_mean_mag, "
                 "phot_rp_mean_flux_over_error")


def gaia_adql(ra: float, dec: float, radius: float) -> str:
    """ADQL of a Gaia DR3 cone (degrees)."""
    return (f"SELECT {_GAIA_COLUMNS} FROM gaiadr3.gaia_source WHERE 1 = CONTAINS("
            f"POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra:.10f}, {dec:.10f}, {radius:.10f}))")


def _query_gaia(ra, dec, radius, timeout) -> Table:
    from astroquery.gaia import Gaia

    job = Gaia.launch_job_async(gaia_adql(ra, dec, radius), verbose=False)
    return job.get_results()


_GAIA_BANDS = ("g", "bp", "rp")
GAIA_CONFIG = IngestRefCatConfig(
    id_name="source_id", ra_err_name="ra_error", dec_err_name="dec_error",
    coord_err_unit="mas", pm_ra_name="pmra", pm_dec_name="pmdec",
    pm_ra_err_name="pmra_error", pm_dec_err_name="pmdec_error", parallax_name="parallax",
    parallax_err_name="parallax_error", epoch_name="ref_epoch", epoch_format="jyear",
    epoch_scale="tcb",
    mag_column_list=[f"phot_{b}_mean_mag" for b in _GAIA_BANDS],
    mag_snr_column_map={f"phot_{b}_mean_mag": f"phot_{b}_mean_flux_over_error"
                        for b in _GAIA_BANDS},
    band_name_map={f"phot_{b}_mean_mag": f"phot_{b}_mean" for b in _GAIA_BANDS},
    photometric_system="gaia")


# --- PS1 DR2 --------------------------------------------------------------------------
_PS1_BANDS = ("g", "r", "i", "z", "y")
PS1_COLUMNS = (["objID", "raMean", "decMean", "raMeanErr", "decMeanErr", "epochMean",
                "nDetections", "qualityFlag", "objInfoFlag", "iMeanKronMag"]
               + [f"{b}MeanPSFMag{e}" for b in _PS1_BANDS for e in ("", "Err")])
PS1_GOOD = 33554432  # objInfoFlag: good-quality measurement in PS1
PS1_NO_MEAN_ASTROMETRY = 524288
PS1_STACK_ASTROMETRY = 1048576


def _query_ps1(ra, dec, radius, timeout) -> Table:
    from astropy.coordinates import SkyCoord
    from astroquery.mast import Catalogs

    Catalogs.TIMEOUT = max(timeout, 60)
    return Catalogs.query_region(SkyCoord(ra, dec, unit="deg"), radius=radius * u.deg,
                                 catalog="Panstarrs", data_release="dr2", table="mean",
                                 nDetections=[("gt", 1)], columns=PS1_COLUMNS)


def ps1_quality_cuts(t: Table) -> Table:
    """The PS1 DR2 mean-object selection of the module docstring (-999 -> NaN)."""
    def col(name):
        c = np.ma.filled(np.ma.asarray(t[name]).astype(float), np.nan)
        return np.where(c <= -999, np.nan, c)

    info = np.ma.filled(np.ma.asarray(t["objInfoFlag"]), 0).astype(np.int64)
    ndet = np.ma.filled(np.ma.asarray(t["nDetections"]), 0).astype(np.int64)
    keep = (ndet > 1) & ((info & PS1_GOOD) != 0)
    keep &= (info & (PS1_NO_MEAN_ASTROMETRY | PS1_STACK_ASTROMETRY)) == 0
    with np.errstate(invalid="ignore"):
        keep &= (col("raMeanErr") < 1.0) & (col("decMeanErr") < 1.0)
        mags = np.column_stack([col(f"{b}MeanPSFMag") for b in _PS1_BANDS])
        keep &= np.isfinite(mags).any(axis=1)
        ext = col("iMeanPSFMag") - col("iMeanKronMag")
        keep &= ~(ext >= 0.05)  # NaN (not measured) passes
    out = t[keep]
    for b in _PS1_BANDS:
        for e in ("", "Err"):
            out[f"{b}MeanPSFMag{e}"] = col(f"{b}MeanPSFMag{e}")[keep]
    return out


PS1_CONFIG = IngestRefCatConfig(
    id_name="objID", ra_name="raMean", dec_name="decMean", ra_err_name="raMeanErr",
    dec_err_name="decMeanErr", coord_err_unit="arcsec", epoch_name="epochMean",
    epoch_format="mjd", epoch_scale="tai",
    mag_column_list=[f"{b}MeanPSFMag" for b in _PS1_BANDS],
    mag_err_column_map={f"{b}MeanPSFMag": f"{b}MeanPSFMagErr" for b in _PS1_BANDS},
    band_name_map={f"{b}MeanPSFMag": b for b in _PS1_BANDS}, photometric_system="ps1")


# --- SDSS DR16 ------------------------------------------------------------------------
_SDSS_BANDS = ("u", "g", "r", "i", "z")
SDSS_AB_OFFSETS = {"u": -0.04, "z": 0.02}


def sdss_sql(ra: float, dec: float, radius: float) -> str:
    """SkyServer SQL of a clean-star cone (degrees)."""
    mags = ", ".join(f"p.psfMag_{b}, p.psfMagErr_{b}" for b in _SDSS_BANDS)
    return (f"SELECT p.objID, p.ra, p.dec, p.raErr, p.decErr, p.mjd, {mags} "
            f"FROM dbo.fGetNearbyObjEq({ra:.10f}, {dec:.10f}, {radius * 60.0:.8f}) AS n "
            "JOIN Star AS p ON n.objID = p.objID WHERE p.clean = 1")


def _query_sdss(ra, dec, radius, timeout) -> Table:
    from astroquery.sdss import SDSS

    t = SDSS.query_sql(sdss_sql(ra, dec, radius), data_release=16, timeout=max(timeout, 60))
    return t if t is not None else Table()


def sdss_to_ab(t: Table) -> Table:
    """SDSS asinh magnitudes to AB (u - 0.04, z + 0.02); -9999 -> NaN."""
    t = t.copy()
    for b in _SDSS_BANDS:
        for c in (f"psfMag_{b}", f"psfMagErr_{b}"):
            v = np.ma.filled(np.ma.asarray(t[c]).astype(float), np.nan)
            t[c] = np.where(v <= -999, np.nan, v)
        t[f"psfMag_{b}"] += SDSS_AB_OFFSETS.get(b, 0.0)
    return t


SDSS_CONFIG = IngestRefCatConfig(
    id_name="objID", ra_err_name="raErr", dec_err_name="decErr", coord_err_unit="arcsec",
    epoch_name="mjd", epoch_format="mjd", epoch_scale="tai",
    mag_column_list=[f"psfMag_{b}" for b in _SDSS_BANDS],
    mag_err_column_map={f"psfMag_{b}": f"psfMagErr_{b}" for b in _SDSS_BANDS},
    band_name_map={f"psfMag_{b}": b for b in _SDSS_BANDS}, photometric_system="sdss")


SERVICES: dict[str, Service] = {
    "gaia_dr3": Service("gaia_dr3", "gea.esac.esa.int", 443, _query_gaia, GAIA_CONFIG,
                        None, "ESA Gaia archive, gaiadr3.gaia_source"),
    "ps1_dr2": Service("ps1_dr2", "catalogs.mast.stsci.edu", 443, _query_ps1, PS1_CONFIG,
                       ps1_quality_cuts, "MAST Pan-STARRS1 DR2 mean objects"),
    "sdss_dr16": Service("sdss_dr16", "skyserver.sdss.org", 443, _query_sdss, SDSS_CONFIG,
                         sdss_to_ab, "SDSS DR16 SkyServer, clean stars"),
}


# --- tiles ------------------------------------------------------------------------------
def tiles_for_cone(ra: float, dec: float, radius: float, tile_nside: int) -> np.ndarray:
    """HEALPix tiles (nested, ``tile_nside``) that overlap the cone.

    A tile overlaps when the centre lies in it or a point of its boundary (sampled
    densely) lies within the radius.
    """
    scheme = ShardScheme(tile_nside)
    hp = scheme.healpix
    cand = scheme.pixels_in_cone(ra, dec, radius)
    own = int(hp.lonlat_to_healpix(ra * u.deg, dec * u.deg))
    lon, lat = hp.boundaries_lonlat(cand, step=16)
    sep = angular_separation(ra, dec, lon.to_value(u.deg), lat.to_value(u.deg))
    keep = (sep.min(axis=1) <= radius) | (cand == own)
    return np.sort(cand[keep])


def tile_cone(tile: int, tile_nside: int) -> tuple[float, float, float]:
    """Centre and radius (deg) of a cone that contains the whole tile."""
    hp = ShardScheme(tile_nside).healpix
    lon, lat = hp.healpix_to_lonlat([tile])
    blon, blat = hp.boundaries_lonlat([tile], step=16)
    ra0, dec0 = lon.to_value(u.deg)[0], lat.to_value(u.deg)[0]
    r = angular_separation(ra0, dec0, blon.to_value(u.deg), blat.to_value(u.deg)).max()
    return ra0, dec0, float(r) * 1.01 + 1.0 / 3600.0


# --- network ----------------------------------------------------------------------------
def check_reachable(service: Service, timeout: float) -> None:
    """Open (and close) a TCP connection to the service; one-line error if impossible."""
    try:
        with socket.create_connection((service.host, service.port), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(f"cannot reach {service.host}:{service.port} for {service.name} "
                        f"({exc.__class__.__name__}: {_one_line(exc)}); "
                        f"{NO_NETWORK_HINT}") from None


# --- the fetch --------------------------------------------------------------------------
@dataclass
class FetchReport:
    """What one fetch did."""

    name: str
    tiles: int
    fetched: int
    skipped: int
    stars_added: int
    n_stars: int
    tile_ids: list[int] = field(default_factory=list)


def fetch_catalog(root, name: str, ra: float, dec: float, radius: float,
                  timeout: float = 5.0, shard_nside: int = 64, tile_nside: int = 128,
                  progress: bool = False) -> FetchReport:
    """Fetch the cone (deg) of service ``name`` into ``ROOT/ref_cats/<name>``.

    Tiles already fetched (recorded in ``config.yaml``) are skipped; every new tile is
    written before the next query, so an interruption loses at most one tile's work.
    """
    if name not in SERVICES:
        raise UserError(f"--name {name}: unknown service; choose one of "
                        f"{', '.join(SERVICES)} (or ingest a local file with "
                        "ingestReferenceCatalog.py)")
    if not (radius > 0) or not (-90 <= dec <= 90):
        raise UserError(f"--ra {ra} --dec {dec} --radius {radius}: give a positive radius "
                        "and a declination within +-90 (degrees)")
    service = SERVICES[name]
    cat_dir = catalog_dir(root, name)
    info = _existing_fetch(root, name, service)
    if info is not None:
        shard_nside = int(info["shard_scheme"]["nside"])
        tile_nside = int(info["fetch"]["tile_nside"])
    if tile_nside < shard_nside:
        tile_nside = shard_nside  # a tile must lie inside one shard
    config = service.config.model_copy(update={"shard_nside": shard_nside})
    tiles = tiles_for_cone(ra, dec, radius, tile_nside)
    done = set(info["fetch"]["tiles_done"]) if info else set()
    todo = [int(t) for t in tiles if int(t) not in done]
    report = FetchReport(name, len(tiles), 0, len(tiles) - len(todo), 0,
                         int(info["n_stars"]) if info else 0)
    if not todo:
        log.info("%s: all %d tiles of the area were fetched before: nothing to do",
                 name, len(tiles))
        return report
    check_reachable(service, timeout)
    cat_dir.mkdir(parents=True, exist_ok=True)
    scheme = ShardScheme(shard_nside)
    header = shard_header(name, config)
    it = todo
    if progress:
        from tqdm import tqdm

        it = tqdm(todo, desc=f"fetch {name}", unit="tile")
    for k, tile in enumerate(it):
        tra, tdec, trad = tile_cone(tile, tile_nside)
        try:
            raw = service.query(tra, tdec, trad, timeout)
        except Exception as exc:  # remote services raise many types; all end the same way
            log.debug("query of tile %d failed", tile, exc_info=True)
            raise UserError(
                f"{name}: query of tile {tile} failed ({exc.__class__.__name__}: "
                f"{_one_line(exc)}); {k} of {len(todo)} new "
                "tiles were fetched and kept: run the same command again to resume; "
                f"{NO_NETWORK_HINT}") from None
        stars = _tile_stars(raw, service, config, tile, tile_nside)
        if len(stars):
            write_shards(cat_dir, stars, scheme, header, merge=True)
        summary = catalog_summary(stars) if len(stars) else None
        info = _record_tile(cat_dir, name, config, info, tile, tile_nside, summary)
        report.fetched += 1
        report.stars_added += len(stars)
        report.tile_ids.append(tile)
    report.n_stars = int(info["n_stars"])
    log.info("%s: fetched %d tiles (%d stars), %d tiles already present; catalog holds "
             "%d stars", name, report.fetched, report.stars_added, report.skipped,
             report.n_stars)
    return report


def _existing_fetch(root, name: str, service: Service) -> dict | None:
    d = catalog_dir(root, name)
    if not (d / "config.yaml").exists():
        return None
    info = read_catalog_config(root, name)
    if "fetch" not in info or info["fetch"].get("service") != service.name:
        raise UserError(f"reference catalog {name!r} in {d.parent} was not fetched from "
                        f"{service.name}; remove it or ingest into another --name")
    return info


def _tile_stars(raw: Table, service: Service, config: IngestRefCatConfig, tile: int,
                tile_nside: int) -> Table:
    """Convert one answer and keep the stars of this tile (cones of tiles overlap)."""
    if raw is None or len(raw) == 0:
        return Table()
    if service.cuts is not None:
        raw = service.cuts(raw)
        if len(raw) == 0:
            return Table()
    stars = convert_table(raw, config, f"{service.name} tile {tile}")
    pix = ShardScheme(tile_nside).pixels_of(stars["coord_ra"], stars["coord_dec"])
    return stars[pix == tile]


def _record_tile(cat_dir, name, config, info, tile, tile_nside, summary) -> dict:
    if info is None:
        empty = {"n_stars": 0, "bands": [], "has_proper_motion": False,
                 "max_pm_mas_yr": 0.0, "epoch_mjd_range": None}
        info = catalog_info(name, config, empty, [])
        info["fetch"] = {"service": name, "tile_nside": tile_nside, "tiles_done": []}
    if summary is not None:
        keys = ("n_stars", "bands", "has_proper_motion", "max_pm_mas_yr",
                "epoch_mjd_range")
        merged = merge_summaries({k: info[k] for k in keys} if info["n_stars"] else None,
                                 summary)
        info.update(merged)
    info["fetch"]["tiles_done"] = sorted(set(info["fetch"]["tiles_done"]) | {int(tile)})
    write_catalog_config(cat_dir, info)
    return info
