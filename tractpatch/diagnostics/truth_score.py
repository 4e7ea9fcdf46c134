"""Accuracy of a rerun against the simulator's truth (``ROOT/sim/truth``).

- calibrations: the fitted WCS of every CCD against the true pixel→sky map, on a grid
  over the CCD (RMS in mas), and the fitted flux calibration against the true one
  (RMS of 2.5 log10(fit/true) in mmag);
- coadds: true stars measured in the coadds: centroid offsets (mas) and flux ratios at
  the coadd zero point.

Each entry is ``{"value", "target", "unit", "ok"}`` so the report can show it.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..image.photocalib import AB_FLUX_NJY, PhotoCalib
from ..image.wcs_io import read_wcs

#: AB magnitude of 1 nJy.
AB_MAG_1NJY = 2.5 * np.log10(AB_FLUX_NJY)

_NAME = re.compile(r"-(\d+)-(\d+)\.fits$")

#: Sky annulus of the coadd star measurement: inner and outer radius beyond the aperture
#: (pixels).
SKY_ANNULUS = (4.0, 12.0)


def _grid(nx, ny, n=9):
    x, y = np.meshgrid(np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, 2 * n - 1))
    return x.ravel(), y.ravel()


def _entry(value, target, unit, smaller_is_better=True):
    ok = None if target is None else bool(value <= target if smaller_is_better
                                          else value >= target)
    return {"value": float(value), "target": target, "unit": unit, "ok": ok}


def score_calibrations(results_dir, truth, prefix: str = "jointcal") -> dict:
    """Score the ``<prefix>_wcs-*`` and ``<prefix>_photoCalib-*`` files of one tract.

    Returns a dict with the overall entries and ``per_ccd`` rows (visit, ccd, mas, mmag).
    """
    results_dir = Path(results_dir)
    seps, dmags, per_ccd = [], [], []
    for wfile in sorted(results_dir.glob(f"{prefix}_wcs-*.fits")):
        m = _NAME.search(wfile.name)
        visit, ccd = int(m.group(1)), int(m.group(2))
        ny, nx = truth.ccd_shape(ccd)
        x, y = _grid(nx, ny)
        wcs = read_wcs(fits.getheader(wfile), source=str(wfile))
        ra_f, dec_f = wcs.all_pix2world(x, y, 0)
        ra_t, dec_t = truth.pixel_to_sky(visit, ccd, x, y)
        dra = (np.mod(ra_f - ra_t + 180, 360) - 180) * np.cos(np.radians(dec_t))
        sep = np.hypot(dra, dec_f - dec_t) * 3.6e6
        seps.append(sep)
        row = {"visit": visit, "ccd": ccd, "wcs_rms_mas": float(np.sqrt(np.mean(sep ** 2)))}
        pfile = results_dir / wfile.name.replace(f"{prefix}_wcs", f"{prefix}_photoCalib")
        if pfile.exists():
            fit = PhotoCalib.read(pfile).evaluate(x, y)
            dm = 2.5 * np.log10(fit / truth.calibration(visit, ccd, x, y)) * 1000
            dmags.append(dm)
            row["calib_rms_mmag"] = float(np.sqrt(np.mean(dm ** 2)))
        per_ccd.append(row)
    out: dict = {"per_ccd": per_ccd}
    if seps:
        s = np.concatenate(seps)
        out[f"{prefix} WCS vs true mapping (RMS over all CCDs)"] = _entry(
            np.sqrt(np.mean(s ** 2)), 5.0, "mas")
        out[f"{prefix} WCS worst CCD (RMS)"] = _entry(
            max(r["wcs_rms_mas"] for r in per_ccd), None, "mas")
    if dmags:
        d = np.concatenate(dmags)
        out[f"{prefix} flux calibration vs truth (RMS)"] = _entry(
            np.sqrt(np.mean(d ** 2)), 3.0, "mmag")
        out[f"{prefix} flux calibration mean offset"] = _entry(np.mean(d), None, "mmag")
    return out


def score_coadd(path, truth, filter_name: str, zero_point: float | None = None,
                min_snr: float = 50.0, bright_limit: float = 18.0) -> dict:
    """Measure the true stars in one coadd patch: centroid offsets and flux ratios.

    Stars are placed with the patch WCS at the mean epoch of the filter's visits and
    measured with sep (windowed centroid; aperture of 3 PSF FWHM with a local sky
    annulus). The aperture flux is compared with the true flux times the coadd PSF's
    enclosed fraction at the star: the true Moffat PSFs of the input CCDs that cover it,
    averaged with the coadd's visit weights (INPUTS table). Only stars without a neighbour
    brighter than 1 % of their flux within :func:`isolation_radius` (the sky annulus plus
    2.5 FWHM) are used: the simulated fields are crowded, and a neighbour's light in the
    annulus is subtracted as sky from every star near it, a one-sided bias (-0.5 % on the
    demo coadds when only the aperture plus 2.5 FWHM was kept clear).
    """
    import sep
    from astropy.table import Table

    with fits.open(path) as h:
        img = np.asarray(h["IMAGE"].data, dtype=np.float64)
        var = np.asarray(h["VARIANCE"].data, dtype=np.float64)
        hdr = h["IMAGE"].header
        zp = zero_point if zero_point is not None else float(
            h[0].header.get("MAGZERO", hdr.get("MAGZERO", 27.0)))
        inputs = Table(h["INPUTS"].data) if "INPUTS" in h else None
    wcs = read_wcs(hdr, source=str(path))
    pix_arcsec = abs(wcs.proj_plane_pixel_scales()[0].to_value("deg")) * 3600
    if inputs is None or not len(inputs):
        return {}
    beta = float(truth.psf["beta"])
    visits = sorted(set(int(v) for v in inputs["visit"]))
    vweight = {v: float(np.mean(inputs["weight"][inputs["visit"] == v])) for v in visits}
    fwhm_mean = float(np.average([truth.visit(v)["fwhm"] for v in visits],
                                 weights=[vweight[v] for v in visits])) / pix_arcsec
    r_ap = 3.0 * fwhm_mean
    epoch = float(np.average([truth.visit(v)["epoch"] for v in visits],
                             weights=[vweight[v] for v in visits]))
    ra, dec = truth.object_positions(epoch=epoch)
    flux_all = np.asarray(truth.objects[f"flux_{filter_name}"], float)
    # the coadd PSF at each star: the Moffats of the inputs that cover it, with their
    # coadd weights (true FWHM at the star's place on each CCD)
    wsum = np.zeros(len(flux_all))
    ee = np.zeros(len(flux_all))
    for v, c in zip(inputs["visit"], inputs["ccd"]):
        rows, xc, yc = truth.objects_on(int(v), int(c))
        fwhm = truth.psf_fwhm(int(v), int(c), xc, yc) / pix_arcsec
        alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
        wsum[rows] += vweight[int(v)]
        ee[rows] += vweight[int(v)] * _aperture_fraction(r_ap, alpha, beta)
    covered = wsum > 0
    enclosed_all = np.where(covered, ee / np.maximum(wsum, 1e-300), np.nan)
    stars = (np.asarray(truth.objects["type"]) == "star") & covered
    x_all, y_all = wcs.all_world2pix(ra, dec, 0)
    keep = stars & _isolated(x_all, y_all, flux_all, isolation_radius(r_ap, fwhm_mean),
                             0.01)
    x, y, flux_true = x_all[keep], y_all[keep], flux_all[keep]
    enclosed = enclosed_all[keep]
    ny, nx = img.shape
    margin = r_ap + SKY_ANNULUS[1] + 2
    inside = (x > margin) & (x < nx - margin) & (y > margin) & (y < ny - margin)
    x, y, flux_true, enclosed = x[inside], y[inside], flux_true[inside], enclosed[inside]
    if len(x) == 0:
        return {}
    good = np.isfinite(img) & np.isfinite(var) & (var > 0)
    img = np.ascontiguousarray(np.where(good, img, 0.0))
    var = np.ascontiguousarray(np.where(good, var, 0.0))
    scale = 10 ** (-0.4 * (zp - AB_MAG_1NJY))  # nJy per coadd count
    flux, ferr, _ = sep.sum_circle(img, x, y, r_ap, var=var,
                                   bkgann=(r_ap + SKY_ANNULUS[0], r_ap + SKY_ANNULUS[1]))
    snr = flux / np.maximum(ferr, 1e-30)
    mag_true = AB_MAG_1NJY - 2.5 * np.log10(flux_true)
    sel = (snr > min_snr) & (mag_true > bright_limit)  # brighter ones saturate
    if sel.sum() < 3:
        return {}
    xw, yw, _ = sep.winpos(img, x[sel], y[sel], fwhm_mean / 2.3548)
    off = np.hypot(xw - x[sel], yw - y[sel]) * pix_arcsec * 1000
    ratio = flux[sel] * scale / (flux_true[sel] * enclosed[sel])
    return {"n_stars": int(sel.sum()), "offset_median_mas": float(np.median(off)),
            "flux_ratio_median": float(np.median(ratio)),
            "flux_ratio_scatter": float(1.4826 * np.median(np.abs(ratio - np.median(ratio)))),
            "enclosed_fraction": float(np.median(enclosed[sel]))}


def isolation_radius(r_ap: float, fwhm: float) -> float:
    """Radius (pixels) that must be clear of brighter neighbours for a star measured with
    aperture ``r_ap`` and the sky annulus :data:`SKY_ANNULUS`: the annulus's outer edge
    plus 2.5 FWHM, so neither the aperture nor the annulus holds a neighbour's core."""
    return r_ap + SKY_ANNULUS[1] + 2.5 * fwhm


def _aperture_fraction(r, alpha, beta, ann=None):
    """Fraction of a Moffat star's flux that an aperture of radius ``r`` measures when
    the sky is taken from the annulus ``r + ann`` (whose share of the wings is then
    subtracted per unit area)."""
    def ee(rr):
        return 1 - (1 + (rr / alpha) ** 2) ** (1 - beta)

    ann = SKY_ANNULUS if ann is None else ann
    r_in, r_out = r + ann[0], r + ann[1]
    return ee(r) - r ** 2 / (r_out ** 2 - r_in ** 2) * (ee(r_out) - ee(r_in))


def _isolated(x, y, flux, radius, max_ratio=0.01) -> np.ndarray:
    """True for objects with no neighbour brighter than ``max_ratio`` of their flux
    within ``radius`` pixels (the simulated fields are crowded)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(np.column_stack([x, y]))
    pairs = tree.query_pairs(radius, output_type="ndarray")
    ok = np.ones(len(x), bool)
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        ok[i[flux[j] > max_ratio * flux[i]]] = False
        ok[j[flux[i] > max_ratio * flux[j]]] = False
    return ok


def score_coadds(coadds: list[dict], truth, target_flux=0.005, target_offset_mas=5.0) -> dict:
    """Combine :func:`score_coadd` over patches (``coadds`` from report_contents)."""
    per = []
    for c in coadds:
        s = score_coadd(c["path"], truth, c["filter"])
        if s:
            per.append(dict(s, filter=c["filter"], patch=c["patch"]))
    if not per:
        return {}
    n = np.array([p["n_stars"] for p in per], float)
    flux = float(np.average([p["flux_ratio_median"] for p in per], weights=n))
    off = float(np.average([p["offset_median_mas"] for p in per], weights=n))
    return {
        # signed (a deficit reads negative), judged on its size
        "coadd star flux / true flux − 1 (median)": {
            "value": flux - 1, "target": target_flux, "unit": "",
            "ok": bool(abs(flux - 1) <= target_flux)},
        "coadd star centroid offset from truth (median)": _entry(off, target_offset_mas,
                                                                 "mas"),
        "coadd stars measured": {"value": int(n.sum()), "target": None, "unit": "",
                                 "ok": None},
        "per_patch": per,
    }
