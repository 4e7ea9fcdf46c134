"""Catalog-only mode: SRC catalogs made straight from the truth, no pixels.

For the scale tests of jointcal: every CCD of every visit gets the SRC catalog that
detectSources would have written (docs/interfaces.md), with measurement noise drawn
from the noise model of the pixel simulation:

- per-pixel sky noise ``sigma_pix^2 = sky/gain + (read_noise/gain)^2`` (ADU^2);
- PSF flux error ``sigma_F^2 = counts/gain + n_eff sigma_pix^2`` with the Moffat
  noise-equivalent area ``n_eff = pi alpha^2 (2 beta - 1) / (beta - 1)^2`` (galaxies:
  alpha widened by their size);
- centroid error per axis ``sqrt(2) (FWHM / 2.355) / SNR`` plus a 0.002 pixel floor;
- aperture fluxes: counts times the Moffat encircled fraction, with their own noise.

Objects fainter than ``catalog_mag_limit`` or with S/N < 5 are not listed. The CCDs are
also registered in the repository (path = the SRC catalog, as there is no image) so the
tasks that select CCDs from the registry find them. An extra column ``truth_id`` names
the true object.
"""
from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..atomic import write_fits_atomic
from ..cli.task import provenance
from ..image.wcs_io import pixel_corners_to_sky, wcs_to_header
from .camera import sky_to_focal
from .observing import seeded

FLAG_BITS = {"flag_saturated": 1, "flag_edge": 2, "flag_bad": 4, "flag_cr": 8,
             "flag_blended": 16}


def moffat_fraction(r_px, alpha, beta):
    """Fraction of a Moffat profile's flux inside radius ``r_px``."""
    return 1.0 - (1.0 + (np.asarray(r_px, float) / alpha) ** 2) ** (1.0 - beta)


def measure(truth, visit, ccd, idx, x, y, config, rng) -> Table:
    """Noisy measurements of the objects ``idx`` at true pixels ``(x, y)``."""
    v = truth.visit(visit)
    o = truth.objects
    beta = float(truth.psf["beta"])
    scale = truth.camera.pixel_scale
    gain, rn = config.gain, config.read_noise
    counts = truth.true_counts(visit, ccd, idx, x, y)
    is_star = np.asarray(o["type"])[idx] == "star"
    fwhm_psf = truth.psf_fwhm(visit, ccd, x, y) / scale
    re_px = np.asarray(o["r_e"], float)[idx] / scale
    fwhm = np.hypot(fwhm_psf, np.where(is_star, 0.0, 1.4 * re_px))
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    sky = v["sky_level"]
    var_pix = sky / gain + (rn / gain) ** 2
    n_eff = np.pi * alpha ** 2 * (2 * beta - 1) / (beta - 1) ** 2
    flux_err = np.sqrt(counts / gain + n_eff * var_pix)
    flux = counts + rng.normal(0, flux_err)
    snr = flux / flux_err
    pos_err = np.hypot(np.sqrt(2.0) * fwhm / 2.355 / np.maximum(np.abs(snr), 1e-3),
                       0.002)
    xm = x + rng.normal(0, pos_err)
    ym = y + rng.normal(0, pos_err)
    peak = counts * (beta - 1) / (np.pi * alpha ** 2) + sky
    t = Table()
    t["x"], t["y"] = xm, ym
    t["x_err"], t["y_err"] = pos_err, pos_err
    t["flux_psf"], t["flux_psf_err"] = flux, flux_err
    for r in config.catalog_apertures:
        frac = moffat_fraction(r, alpha, beta)
        err = np.sqrt(np.maximum(counts * frac, 0) / gain + np.pi * r * r * var_pix)
        t[f"flux_ap_{r}"] = counts * frac + rng.normal(0, err)
        t[f"flux_ap_{r}_err"] = err
    with np.errstate(invalid="ignore", divide="ignore"):
        t["mag_inst"] = -2.5 * np.log10(flux)
    q = np.asarray(o["q"], float)[idx]
    sig = fwhm_psf / 2.355
    t["a"] = np.hypot(sig, np.where(is_star, 0.0, re_px))
    t["b"] = np.hypot(sig, np.where(is_star, 0.0, re_px * q))
    t["theta"] = np.where(is_star, 0.0, np.asarray(o["pa"], float)[idx])
    t["fwhm"] = fwhm
    t["snr"] = snr
    t["is_star"] = is_star | (re_px < 0.25 * fwhm_psf)
    nx, ny = truth.camera.nx, truth.camera.ny
    sat = peak > config.saturation
    edge = (x < 10) | (y < 10) | (x > nx - 11) | (y > ny - 11)
    bad = np.zeros(len(t), bool)
    for bx, start, _ in truth.camera.bad_columns[truth.camera.index(ccd)]:
        bad |= (np.abs(x - bx) < 2) & (y >= start)
    t["flag_saturated"], t["flag_edge"], t["flag_bad"] = sat, edge, bad
    t["flag_cr"] = np.zeros(len(t), bool)
    t["flag_blended"] = np.zeros(len(t), bool)
    flags = np.zeros(len(t), np.int32)
    for name, bit in FLAG_BITS.items():
        flags |= np.where(t[name], bit, 0).astype(np.int32)
    t["flags"] = flags
    t["truth_id"] = np.asarray(o["id"])[idx]
    return t


def src_header(truth, visit, ccd, config, wcs) -> fits.Header:
    """The SRC header of docs/interfaces.md."""
    v = truth.visit(visit)
    nx, ny = truth.camera.nx, truth.camera.ny
    h = fits.Header()
    h["VISIT"], h["CCD"], h["FILTER"] = int(visit), int(ccd), v["filter"]
    h["FIELD"], h["POINTING"] = v["field"], int(v["pointing"])
    h["CCDNAME"] = truth.camera.ccdname(ccd)
    h["MJD-OBS"], h["TIMESYS"], h["EXPTIME"] = float(v["mjd"]), "UTC", config.exptime
    h["NX"], h["NY"] = nx, ny
    h["PSFFWHM"] = (float(truth.psf_fwhm(visit, ccd, (nx - 1) / 2, (ny - 1) / 2)),
                    "arcsec")
    h["SKYLEVEL"] = float(v["sky_level"])
    h["SKYNOISE"] = float(np.sqrt(v["sky_level"] / config.gain
                                  + (config.read_noise / config.gain) ** 2))
    h.update(wcs_to_header(wcs))
    for k, val in provenance("makeDemoRepo", config).items():
        h[k] = val
    h["SIMCATLG"] = (True, "catalog-only simulation: no pixels")
    return h


def write_catalogs(root, truth, config, seed, rerun="sim", progress=False) -> list:
    """Write the SRC catalog of every (visit, CCD) and register the CCDs."""
    from astropy.time import Time
    from tqdm import tqdm

    from ..repo.repository import Repository

    repo = Repository(root, create=True)
    repo.set_rerun(rerun)
    cam = truth.camera
    half_diag = 0.5 * np.hypot(cam.nx, cam.ny) + 2
    paths = []
    units = [(v, c) for v in truth.visits for c in truth.ccds]
    bar = tqdm(total=len(units), desc="catalogs", unit="ccd",
               disable=None if progress else True, leave=False)
    for visit in truth.visits:
        v = truth.visit(visit)
        ra, dec = truth.object_positions(visit)
        fx, fy = sky_to_focal(ra, dec, cam.pixel_scale, cam.k1, v["rotation"], v["ra"],
                              v["dec"])
        order = np.argsort(fx)
        fxs = fx[order]
        mag = np.asarray(truth.objects[f"mag_{v['filter']}"], float)
        for ccd in truth.ccds:
            i = cam.index(ccd)
            lo, hi = np.searchsorted(fxs, [cam.fx0[i] - half_diag, cam.fx0[i] + half_diag])
            cand = order[lo:hi]
            cand = cand[(np.abs(fy[cand] - cam.fy0[i]) < half_diag)
                        & (mag[cand] < config.catalog_mag_limit)]
            x, y = cam.from_focal(ccd, fx[cand], fy[cand])
            ok = (x > -0.5) & (x < cam.nx - 0.5) & (y > -0.5) & (y < cam.ny - 0.5)
            cand, x, y = cand[ok], x[ok], y[ok]
            rng = seeded(seed, 20, visit, ccd)
            t = measure(truth, visit, ccd, cand, x, y, config, rng)
            t = t[t["snr"] > 5]
            wcs = truth.header_wcs(visit, ccd)
            sra, sdec = wcs.all_pix2world(np.asarray(t["x"]), np.asarray(t["y"]), 0)
            t.add_column(np.arange(len(t), dtype=np.int64)
                         + (int(visit) * 1000 + int(ccd)) * 100_000, name="id", index=0)
            t.add_column(np.mod(sra, 360.0), name="ra", index=5)
            t.add_column(sdec, name="dec", index=6)
            _set_units(t)
            hdu = fits.BinTableHDU(t, header=src_header(truth, visit, ccd, config, wcs),
                                   name="SOURCES")
            path = repo.path("src", pointing=v["pointing"], filter=v["filter"],
                             visit=int(visit), ccd=int(ccd))
            write_fits_atomic(path, fits.HDUList([fits.PrimaryHDU(), hdu]))
            paths.append(path)
            _register(repo, truth, visit, ccd, wcs, path, Time)
            bar.update(1)
    bar.close()
    return paths


def _set_units(t: Table) -> None:
    units = {"x": "pix", "y": "pix", "x_err": "pix", "y_err": "pix", "ra": "deg",
             "dec": "deg", "flux_psf": "ct", "flux_psf_err": "ct", "mag_inst": "mag",
             "a": "pix", "b": "pix", "theta": "deg", "fwhm": "pix"}
    for name in t.colnames:
        if name.startswith("flux_ap_"):
            units[name] = "ct"
    for k, u in units.items():
        t[k].unit = u


def _register(repo, truth, visit, ccd, wcs, path, Time) -> None:
    v = truth.visit(visit)
    nx, ny = truth.camera.nx, truth.camera.ny
    corners = pixel_corners_to_sky(wcs, (ny, nx))
    centre = wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
    row = dict(instrument="hsc", visit=int(visit), ccd=int(ccd),
               ccdname=truth.camera.ccdname(ccd), filter=v["filter"], field=v["field"],
               pointing=int(v["pointing"]),
               dateObs=Time(v["mjd"], format="mjd", scale="utc").isot[:10],
               mjd=float(v["mjd"]), expTime=float(truth.detector.get("exptime", 0)) or None,
               path=str(path.relative_to(repo.root)), hdu="SOURCES", nx=nx, ny=ny,
               ra_center=float(np.mod(centre[0], 360)), dec_center=float(centre[1]))
    for k, (ra, dec) in enumerate(corners, start=1):
        row[f"ra{k}"], row[f"dec{k}"] = float(ra), float(dec)
    repo.registry.add_exposure(row)
