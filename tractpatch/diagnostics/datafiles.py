"""Data files of a joint fit and its residual statistics.

Files (all written atomically): ``catalog.fits`` (per star, units in the columns),
``ccd.dat``, ``ccdScale.dat``, ``coeffs.dat``, ``dmag.dat``, ``dpos.dat`` and
``residualStats.yaml``. The .dat files are whitespace-separated text with one commented
header line naming the columns with their units in brackets (``# visit ccd x[pix] ...``),
readable by ``numpy.loadtxt`` and ``astropy.io.ascii.read(path, format="commented_header")``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits
from astropy.table import Table

from .. import __version__
from ..atomic import atomic_path, write_fits_atomic, write_text_atomic
from .fitdata import FitDiagnostics


def clipped_stats(values, nsigma: float = 3.0, iters: int = 5):
    """Iterative ``nsigma`` clipped mean, standard deviation and count of finite values."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    keep = np.ones(v.size, bool)
    for _ in range(iters):
        mean, std = v[keep].mean(), v[keep].std()
        new = np.abs(v - mean) <= nsigma * std if std > 0 else keep
        if new.sum() == keep.sum():
            break
        keep = new
    return float(v[keep].mean()), float(v[keep].std()), int(keep.sum())


def group_rms(index, values2, n_groups):
    """RMS of per-measurement squared values ``values2`` within groups, and counts."""
    n = np.bincount(index, minlength=n_groups)
    s = np.bincount(index, weights=values2, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.sqrt(s / np.maximum(n, 1)), np.nan), n


def residual_stats(data: FitDiagnostics, nsigma: float = 3.0) -> dict:
    """Residual statistics of the not-rejected measurements (the numbers the plots show).

    Returns
    -------
    dict
        ``clipped``: for ``all``, ``ref`` and ``internal``, the ``nsigma``-clipped
        ``sigma_dx``, ``sigma_dy`` (mas), ``sigma_dmag`` (mag) and counts (as in
        ResPosScatter and ResFlux); ``per_ccd`` and ``per_visit``: ID -> ``rms_pos`` (RMS
        of the residual vector length, mas), ``rms_dx``, ``rms_dy`` (mas), ``rms_dmag``
        (mag), ``n``; ``n_meas``, ``n_rejected``, ``n_stars``, ``nsigma``.
    """
    ok = ~data.rejected
    out = {"nsigma": nsigma, "n_meas": data.n_meas, "n_rejected": int(data.rejected.sum()),
           "n_stars": int(data.star_ra.size), "clipped": {}}
    for name, mask in (("all", ok), ("ref", ok & data.is_ref), ("internal", ok & ~data.is_ref)):
        _, sx, nx = clipped_stats(data.dx[mask], nsigma)
        _, sy, _ = clipped_stats(data.dy[mask], nsigma)
        _, sm, nm = clipped_stats(data.dmag[mask], nsigma)
        out["clipped"][name] = {"sigma_dx": sx, "sigma_dy": sy, "sigma_dmag": sm,
                                "n": int(mask.sum()), "n_kept_dx": nx, "n_kept_dmag": nm}
    for key, idx, ids in (("per_ccd", data.ccd_index(), data.ccd_id),
                          ("per_visit", data.visit_index(), data.visit_id)):
        i = idx[ok]
        rx, n = group_rms(i, data.dx[ok] ** 2, ids.size)
        ry, _ = group_rms(i, data.dy[ok] ** 2, ids.size)
        rm, _ = group_rms(i, np.nan_to_num(data.dmag[ok]) ** 2, ids.size)
        out[key] = {int(g): {"rms_pos": float(np.hypot(rx[j], ry[j])), "rms_dx": float(rx[j]),
                             "rms_dy": float(ry[j]), "rms_dmag": float(rm[j]), "n": int(n[j])}
                    for j, g in enumerate(ids)}
    return out


def _write_table(path, header: list[str], columns: list[np.ndarray], fmts: list[str],
                 chunk: int = 20000):
    """Whitespace-separated columns with one ``# name[unit] ...`` header line, atomically.

    Rows are formatted a chunk at a time with one ``%`` operation on a repeated row format
    (C speed; no Python loop per row).
    """
    path = Path(path)
    row_fmt = " ".join(fmts) + "\n"
    n = len(columns[0])
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("# " + " ".join(header) + "\n")
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            # interleave the columns row by row: [r0c0, r0c1, ..., r1c0, ...]
            block = np.empty((stop - start, len(columns)), dtype=object)
            for j, c in enumerate(columns):
                block[:, j] = np.asarray(c)[start:stop]
            f.write((row_fmt * (stop - start)) % tuple(block.ravel().tolist()))
    return path


def write_catalog(data: FitDiagnostics, path) -> Path:
    """``catalog.fits``: per fitted star mean RA, Dec, magnitude, error, number of obs."""
    t = Table()
    t["star"] = np.arange(data.star_ra.size, dtype=np.int64)
    t["ra"] = data.star_ra
    t["ra"].unit = "deg"
    t["dec"] = data.star_dec
    t["dec"].unit = "deg"
    t["mag"] = data.star_mag
    t["mag"].unit = "mag"
    t["mag_err"] = data.star_mag_err
    t["mag_err"].unit = "mag"
    t["nobs"] = data.star_nobs
    for c, d in (("star", "index used in dmag.dat/dpos.dat"), ("ra", "mean right ascension"),
                 ("dec", "mean declination"), ("mag", "mean calibrated AB magnitude"),
                 ("mag_err", "error of the mean magnitude"),
                 ("nobs", "number of measurements not rejected")):
        t[c].description = d
    hdu = fits.table_to_hdu(t)
    hdu.name = "STARS"
    for k, v in (("SOLVER", data.solver), ("TRACT", int(data.tract)),
                 ("FILTER", data.filter), ("MAGSYS", "AB"),
                 ("TPVERSN", __version__)):
        hdu.header[k] = v
    write_fits_atomic(path, fits.HDUList([fits.PrimaryHDU(), hdu]))
    return Path(path)


def write_ccd(data: FitDiagnostics, path) -> Path:
    """``ccd.dat``: CCD centre (deg) and rotation angle (deg) on the focal plane."""
    return _write_table(path, ["ccd", "fx[deg]", "fy[deg]", "angle[deg]"],
                        [data.ccd_id, data.ccd_fx, data.ccd_fy, data.ccd_angle],
                        ["%d", "%.7f", "%.7f", "%.6f"])


def write_ccd_scale(data: FitDiagnostics, path) -> Path:
    """``ccdScale.dat``: per-CCD flux scale and the same as a magnitude offset."""
    with np.errstate(divide="ignore", invalid="ignore"):
        dm = -2.5 * np.log10(data.ccd_scale)
    return _write_table(path, ["ccd", "scale[1]", "dmag[mag]"], [data.ccd_id, data.ccd_scale, dm],
                        ["%d", "%.8f", "%.6f"])


def write_coeffs(data: FitDiagnostics, path) -> Path:
    """``coeffs.dat``: one row per coefficient: visit, flux scale, model name, index, value."""
    visit, scale, name, index, value = [], [], [], [], []
    for v, s, c in zip(data.visit_id, data.visit_scale, data.coeffs):
        for n, arr in c.items():
            k = arr.size
            visit.append(np.full(k, v))
            scale.append(np.full(k, s))
            name.append(np.full(k, n.replace(" ", "_") or "-"))
            index.append(np.arange(k))
            value.append(arr)
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.array([], dt))
    return _write_table(path, ["visit", "visit_scale[1]", "name", "index", "value"],
                        [cat(visit, int), cat(scale, float), cat(name, str), cat(index, int),
                         cat(value, float)], ["%d", "%.8f", "%s", "%d", "%.10g"])


def write_dmag(data: FitDiagnostics, path) -> Path:
    """``dmag.dat``: every magnitude residual."""
    return _write_table(
        path, ["visit", "ccd", "star", "fx[deg]", "fy[deg]", "mag[AB]", "dmag[mag]",
               "mag_err[mag]", "ref[0/1]", "rejected[0/1]"],
        [data.visit, data.ccd, data.star, data.fx, data.fy, data.mag, data.dmag, data.mag_err,
         data.is_ref.astype(int), data.rejected.astype(int)],
        ["%d", "%d", "%d", "%.6f", "%.6f", "%.5f", "%.5f", "%.5f", "%d", "%d"])


def write_dpos(data: FitDiagnostics, path) -> Path:
    """``dpos.dat``: every astrometric residual."""
    return _write_table(
        path, ["visit", "ccd", "star", "x[pix]", "y[pix]", "fx[deg]", "fy[deg]", "dx[mas]",
               "dy[mas]", "ref[0/1]", "rejected[0/1]"],
        [data.visit, data.ccd, data.star, data.x, data.y, data.fx, data.fy, data.dx, data.dy,
         data.is_ref.astype(int), data.rejected.astype(int)],
        ["%d", "%d", "%d", "%.3f", "%.3f", "%.6f", "%.6f", "%.3f", "%.3f", "%d", "%d"])


def write_stats(stats: dict, path) -> Path:
    """``residualStats.yaml``: :func:`residual_stats` as YAML."""
    write_text_atomic(path, yaml.safe_dump(stats, sort_keys=False))
    return Path(path)
