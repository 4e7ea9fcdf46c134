"""Load reference stars in a sky region: cone or polygon, at an epoch, in a filter.

Returned table (one row per star; units in the column metadata):

``id``; ``ra``, ``dec`` (deg, ICRS, at ``epoch``); ``ra_err``, ``dec_err`` (mas, RA error
as an angle on the sky, grown by the proper-motion error times the epoch difference);
``pm_ra``, ``pm_dec``, ``pm_ra_err``, ``pm_dec_err`` (mas/yr), ``pm_flag``; ``parallax``,
``parallax_err`` (mas); ``epoch`` (MJD of the returned positions: ``epoch_mjd`` when
given, else the catalog epoch); ``ref_epoch`` (MJD of the catalog positions);
``<band>_flux``, ``<band>_fluxErr`` (nJy) for every band; with ``filter_name``, ``flux``
and ``flux_err`` (nJy) in that filter through the instrument's colour terms.

Stars are selected by their position at ``epoch_mjd``; the shard search is grown by the
catalog's largest proper motion times the epoch difference so moving stars near the edge
are kept.
"""
from __future__ import annotations

from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.table import Table, vstack

from ..errors import DataQualityError, UserError
from .colorterms import find_colorterm
from .propermotion import DAYS_PER_YEAR, propagate, propagate_errors
from .shards import (REFCAT_DIR, ShardScheme, catalog_dir, read_catalog_config,
                     read_shard, shard_pixels, shard_path)

__all__ = ["load_region", "load_polygon", "available_refcats", "angular_separation"]

RAD_TO_MAS = 180.0 / np.pi * 3600.0e3


def available_refcats(root) -> list[str]:
    """Names of the reference catalogs in ``ROOT/ref_cats``."""
    d = Path(root) / REFCAT_DIR
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir()
                  if p.is_dir() and not p.name.startswith(".")
                  and (p / "config.yaml").exists())


def angular_separation(ra1, dec1, ra2, dec2):
    """Great-circle distance (deg) between positions in degrees (Vincenty formula)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(x, dtype=float))
                            for x in (ra1, dec1, ra2, dec2))
    dra = ra2 - ra1
    num = np.hypot(np.cos(dec2) * np.sin(dra),
                   np.cos(dec1) * np.sin(dec2) - np.sin(dec1) * np.cos(dec2) * np.cos(dra))
    den = np.sin(dec1) * np.sin(dec2) + np.cos(dec1) * np.cos(dec2) * np.cos(dra)
    return np.degrees(np.arctan2(num, den))


def load_region(root, name: str, ra: float, dec: float, radius: float,
                epoch_mjd: float | None = None, filter_name: str | None = None,
                instrument=None) -> Table:
    """Reference stars within ``radius`` (deg) of (``ra``, ``dec``) (deg).

    Parameters
    ----------
    root : str or Path
        Repository root.
    name : str
        Catalog name under ``ROOT/ref_cats``.
    ra, dec, radius : float
        Cone centre and radius, degrees.
    epoch_mjd : float, optional
        Epoch (MJD) to propagate proper motions to (and to select at).
    filter_name : str, optional
        Instrument filter; adds ``flux``/``flux_err`` through the colour terms.
    instrument : str or Instrument, optional
        Instrument whose colour terms apply (e.g. ``"hsc"``).

    Returns
    -------
    astropy.table.Table
        See the module docstring.

    Raises
    ------
    DataQualityError
        No star of the catalog lies in the cone.
    """
    if not (np.isfinite(radius) and radius > 0):
        raise UserError(f"load_region: radius must be positive (got {radius})")
    info = read_catalog_config(root, name)
    stars = _candidates(root, name, info, ra, dec, radius, epoch_mjd)
    keep = angular_separation(ra, dec, stars["ra"], stars["dec"]) <= radius
    stars = stars[keep]
    what = f"within {radius:.4g} deg of (ra, dec) = ({ra:.5f}, {dec:.5f})"
    return _finish(root, name, info, stars, what, ra, dec, filter_name, instrument)


def load_polygon(root, name: str, ra_vertices, dec_vertices,
                 epoch_mjd: float | None = None, filter_name: str | None = None,
                 instrument=None) -> Table:
    """Reference stars inside a sky polygon (vertices in degrees, in order).

    The polygon (convex or not, smaller than a hemisphere) is tested in the gnomonic
    projection about its centre, where great-circle edges are straight lines. Other
    parameters and the result as :func:`load_region`.
    """
    from matplotlib.path import Path as MplPath

    rav = np.asarray(ra_vertices, dtype=float)
    decv = np.asarray(dec_vertices, dtype=float)
    if rav.shape != decv.shape or rav.size < 3:
        raise UserError("load_polygon: give at least 3 vertices (ra and dec lists of the "
                        "same length)")
    ra0, dec0 = _mean_direction(rav, decv)
    radius = float(angular_separation(ra0, dec0, rav, decv).max())
    if radius >= 89.0:
        raise UserError("load_polygon: the polygon spans a hemisphere; split it")
    info = read_catalog_config(root, name)
    stars = _candidates(root, name, info, ra0, dec0, radius, epoch_mjd)
    xv, yv = _gnomonic(ra0, dec0, rav, decv)
    x, y = _gnomonic(ra0, dec0, np.asarray(stars["ra"]), np.asarray(stars["dec"]))
    near = angular_separation(ra0, dec0, stars["ra"], stars["dec"]) <= radius
    inside = np.zeros(len(stars), dtype=bool)
    if near.any():
        path = MplPath(np.column_stack([xv, yv]))
        inside[near] = path.contains_points(np.column_stack([x[near], y[near]]))
    stars = stars[inside]
    what = (f"inside the polygon around (ra, dec) = ({ra0:.5f}, {dec0:.5f}) "
            f"(radius {radius:.4g} deg)")
    return _finish(root, name, info, stars, what, ra0, dec0, filter_name, instrument)


# --- internals ----------------------------------------------------------------------
def _candidates(root, name, info, ra, dec, radius, epoch_mjd) -> Table:
    """Stars of every shard that may hold one within ``radius`` at ``epoch_mjd``."""
    scheme = ShardScheme(int(info["shard_scheme"]["nside"]))
    grow = 0.0
    rng = info.get("epoch_mjd_range")
    if epoch_mjd is not None and rng and info.get("max_pm_mas_yr"):
        dt = max(abs(epoch_mjd - rng[0]), abs(epoch_mjd - rng[1])) / DAYS_PER_YEAR
        grow = info["max_pm_mas_yr"] * dt / 3600.0e3
    d = catalog_dir(root, name)
    parts = [read_shard(shard_path(d, p))
             for p in scheme.pixels_in_cone(ra, dec, radius + grow)
             if shard_path(d, p).exists()]
    table = vstack(parts, metadata_conflicts="silent") if parts else None
    return _to_output(table, epoch_mjd, info.get("bands", []))


def _to_output(t: Table | None, epoch_mjd, bands) -> Table:
    out = Table()
    if t is None:
        t = Table({c: np.zeros(0) for c in (
            "id", "coord_ra", "coord_dec", "coord_raErr", "coord_decErr", "pm_ra", "pm_dec",
            "pm_raErr", "pm_decErr", "pm_flag", "parallax", "parallaxErr", "epoch")})
        for b in bands:
            t[f"{b}_flux"] = np.zeros(0)
            t[f"{b}_fluxErr"] = np.zeros(0)
    ra0 = np.degrees(np.asarray(t["coord_ra"], dtype=float))
    dec0 = np.degrees(np.asarray(t["coord_dec"], dtype=float))
    ref_epoch = np.asarray(t["epoch"], dtype=float)
    pm_ra = np.asarray(t["pm_ra"], dtype=float)
    pm_dec = np.asarray(t["pm_dec"], dtype=float)
    ra_err = np.asarray(t["coord_raErr"], dtype=float) * RAD_TO_MAS
    dec_err = np.asarray(t["coord_decErr"], dtype=float) * RAD_TO_MAS
    if epoch_mjd is not None:
        dt = np.where(np.isfinite(ref_epoch), (epoch_mjd - ref_epoch) / DAYS_PER_YEAR, 0.0)
        ra_, dec_ = propagate(ra0, dec0, pm_ra, pm_dec, dt)
        ra_err = propagate_errors(ra_err, np.asarray(t["pm_raErr"], dtype=float), dt)
        dec_err = propagate_errors(dec_err, np.asarray(t["pm_decErr"], dtype=float), dt)
        epoch = np.full(len(t), float(epoch_mjd))
    else:
        ra_, dec_, epoch = ra0, dec0, ref_epoch
    cols = [("id", np.asarray(t["id"], dtype=np.int64), None),
            ("ra", ra_, u.deg), ("dec", dec_, u.deg),
            ("ra_err", ra_err, u.mas), ("dec_err", dec_err, u.mas),
            ("pm_ra", pm_ra, u.mas / u.yr), ("pm_dec", pm_dec, u.mas / u.yr),
            ("pm_ra_err", np.asarray(t["pm_raErr"], dtype=float), u.mas / u.yr),
            ("pm_dec_err", np.asarray(t["pm_decErr"], dtype=float), u.mas / u.yr),
            ("pm_flag", np.asarray(t["pm_flag"], dtype=bool), None),
            ("parallax", np.asarray(t["parallax"], dtype=float), u.mas),
            ("parallax_err", np.asarray(t["parallaxErr"], dtype=float), u.mas),
            ("epoch", epoch, u.day), ("ref_epoch", ref_epoch, u.day)]
    for b in bands:
        cols.append((f"{b}_flux", np.asarray(t[f"{b}_flux"], dtype=float), u.nJy))
        cols.append((f"{b}_fluxErr", np.asarray(t[f"{b}_fluxErr"], dtype=float), u.nJy))
    for c, v, unit in cols:
        out[c] = v
        if unit is not None:
            out[c].unit = unit
    return out


def _finish(root, name, info, stars: Table, what: str, ra, dec, filter_name,
            instrument) -> Table:
    if len(stars) == 0:
        raise DataQualityError(f"reference catalog {name!r} has no stars {what}"
                               f"{_nearest_hint(root, name, info, ra, dec)}; ingest or "
                               "fetch a catalog that covers the field")
    bands = info.get("bands", [])
    stars.meta.update({"REFCAT": name, "EPOCH": float(stars["epoch"][0])
                       if np.all(stars["epoch"] == stars["epoch"][0]) else None})
    if filter_name is not None:
        term = find_colorterm(filter_name, instrument, info.get("photometric_system", name),
                              bands, root=root, catalog=name)
        fluxes = {b: stars[f"{b}_flux"] for b in {term.primary, term.secondary}}
        errors = {b: stars[f"{b}_fluxErr"] for b in {term.primary, term.secondary}}
        flux, flux_err = term.transform_fluxes(fluxes, errors)
        stars["flux"] = flux
        stars["flux"].unit = u.nJy
        stars["flux_err"] = flux_err
        stars["flux_err"].unit = u.nJy
        stars.meta.update({"FILTER": filter_name, "CT_PRIM": term.primary,
                           "CT_SEC": term.secondary, "CT_C0": term.c0, "CT_C1": term.c1,
                           "CT_C2": term.c2})
    return stars


def _nearest_hint(root, name, info, ra, dec) -> str:
    pix = shard_pixels(catalog_dir(root, name))
    if len(pix) == 0:
        return " (the catalog has no shards)"
    hp = ShardScheme(int(info["shard_scheme"]["nside"])).healpix
    lon, lat = hp.healpix_to_lonlat(pix)
    sep = angular_separation(ra, dec, lon.to_value(u.deg), lat.to_value(u.deg))
    i = int(np.argmin(sep))
    if sep[i] < hp.pixel_resolution.to_value(u.deg):
        return " (the catalog covers the area, but no star falls inside it)"
    return (f" (its nearest shard is centred {sep[i]:.2f} deg away at ra, dec = "
            f"{lon[i].to_value(u.deg):.3f}, {lat[i].to_value(u.deg):.3f})")


def _mean_direction(ra_deg, dec_deg):
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    v = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).sum(1)
    v /= np.linalg.norm(v)
    return float(np.degrees(np.arctan2(v[1], v[0])) % 360.0), \
        float(np.degrees(np.arcsin(v[2])))


def _gnomonic(ra0, dec0, ra, dec):
    """Gnomonic (TAN) projection about (ra0, dec0); inputs and outputs in degrees."""
    a0, d0 = np.radians(ra0), np.radians(dec0)
    a, d = np.radians(ra), np.radians(dec)
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    x = np.cos(d) * np.sin(a - a0) / cosc
    y = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cosc
    return np.degrees(x), np.degrees(y)
