"""End to end on the simulator: CALEXPs (true WCS and calibration) → coaddDriver.py →
stars at their true positions with the inputs' fluxes at zero point 27, the satellite
trail clipped, the INPUTS/provenance written, a missing CALEXP skipped.

The CALEXPs are written here from the simulated exposures with the TRUE pixel→sky map
(fitted as TAN-SIP, < 0.01 px) and the TRUE calibration from the sim truth, so the test
measures the coadd alone, not jointcal.
"""
from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import fit_wcs_from_points

from tractpatch.image import Exposure, PhotoCalib, read_exposure, write_exposure
from tractpatch.repo import Repository
from tractpatch.repo.exposure_io import load_exposure
from tractpatch.sim import make_demo_repo, preset_config
from tractpatch.sim import camera as cam

SKIP_CCD = (1006, 3)  # its CALEXP is not written: coaddDriver must skip it


def _true_calexp(truth, exp, row):
    ny, nx = exp.shape
    yy, xx = np.mgrid[0:ny:8j, 0:nx:8j]
    ra, dec = truth.pixel_to_sky(row["visit"], row["ccd"], xx.ravel(), yy.ravel())
    wcs = fit_wcs_from_points((xx.ravel(), yy.ravel()), SkyCoord(ra, dec, unit="deg"),
                              projection="TAN", sip_degree=3)
    yy, xx = np.mgrid[0:ny, 0:nx]
    cal = truth.calibration(row["visit"], row["ccd"], xx, yy)
    return Exposure(image=exp.image * cal, mask=exp.mask, variance=exp.variance * cal ** 2,
                    wcs=wcs, photo_calib=PhotoCalib.constant(1.0, bbox=(0, 0, nx, ny)),
                    info=exp.info, mask_planes=exp.mask_planes, header=dict(exp.header))


def trail_survey(root, skip=None):
    """The coadd tests' survey in ``root``: one field, one filter, four visits (the
    second carries the satellite trail), a discrete skymap (rerun ``coadd``) and a true
    CALEXP per CCD (except ``skip``, a (visit, ccd)). Fewer cosmic rays and galaxies than
    the preset leave more clean, isolated stars to measure.

    Returns
    -------
    demo, repo, calexps : the simulation, the Repository, {(visit, ccd): CALEXP path}
    """
    from conftest import run_cmd

    cfg = preset_config("tiny", overrides=["filters=[HSC-R]", "n_fields=1",
                                           "visits_per_field=4", "cosmic_ray_rate=10",
                                           "galaxy_density=50000"])
    demo = make_demo_repo(root, config=cfg)
    run_cmd("makeDiscreteSkyMap.py", root, "--rerun", "coadd", "--id", "filter=HSC-R",
            "--config", "doPlot=False", "--no-progress", check=0)
    repo = Repository(root, rerun="coadd")
    calexps = {}
    for row in repo.registry.exposures():
        if (row["visit"], row["ccd"]) == skip:
            continue
        out = _true_calexp(demo.truth, load_exposure(repo, row), row)
        path = repo.path("calexp", pointing=row["pointing"] or 0, filter=row["filter"],
                         tract=0, visit=row["visit"], ccd=row["ccd"])
        write_exposure(path, out, {"CALIBSRC": "jointcal", "CALIBFIL": "sim-truth"})
        calexps[(row["visit"], row["ccd"])] = path
    return demo, repo, calexps


@pytest.fixture(scope="module")
def coadd(tmp_path_factory):
    from conftest import run_cmd

    root = tmp_path_factory.mktemp("coadd_e2e")
    demo, repo, calexps = trail_survey(root, skip=SKIP_CCD)
    p = run_cmd("coaddDriver.py", root, "--rerun", "coadd", "--id", "tract=0",
                "filter=HSC-R", "--no-progress", check=0)
    path = repo.path("deepCoadd", filter="HSC-R", tract=0, patch="0,0")
    return dict(root=root, truth=demo.truth, path=path, calexps=calexps, log=p.stderr)


def _stars(truth, wcs, nimage, clipped, calexps):
    """Isolated, unsaturated, well-exposed true stars, each with the CALEXPs covering it;
    the coadd must have every one of those inputs over the star's box."""
    epoch = np.mean([truth.visit(v)["epoch"] for v in truth.visits])
    ra, dec = truth.object_positions(epoch=epoch)
    x, y = wcs.world_to_pixel_values(ra, dec)
    mag = np.asarray(truth.objects["mag_HSC-R"])
    star = np.asarray(truth.objects["type"]) == "star"
    ny, nx = nimage.shape
    exps = {k: read_exposure(p) for k, p in calexps.items()}
    trail_dist = _trail_distance(truth, ra, dec)
    out = []
    for i in np.flatnonzero(star & (mag > 17.5) & (mag < 21.0)):
        d = np.hypot(x - x[i], y - y[i])
        if np.any((d > 0) & (d < 25) & (mag < mag[i] + 4)) or trail_dist[i] < 30:
            continue
        ix, iy = int(round(x[i])), int(round(y[i]))
        if not (30 <= ix < nx - 30 and 30 <= iy < ny - 30):
            continue
        cov = []
        clean = True
        for k, e in exps.items():
            px, py = e.wcs.world_to_pixel_values(ra[i], dec[i])
            if 26 <= px < e.shape[1] - 26 and 26 <= py < e.shape[0] - 26:
                cov.append((k, e, float(px), float(py)))
                # no flagged input pixel (CR, bad column) near the star: the CALEXP
                # measurement below would include it, the coadd leaves it out
                jx, jy = int(round(float(px))), int(round(float(py)))
                bad = e.mask_planes.bitmask("BAD", "SAT", "CR", "NO_DATA", "EDGE")
                clean &= not np.any(e.mask[max(0, jy - 29):jy + 30,
                                           max(0, jx - 29):jx + 30] & bad)
        if not clean or len(cov) < 2 or len({k[0] for k, *_ in cov}) != len(cov):
            continue
        # every input over the box, but for the ~0.3 % of values a 3-sigma clip takes
        # from pure noise
        box = np.s_[iy - 25:iy + 26, ix - 25:ix + 26]
        if np.all((nimage[box] == len(cov)) | (clipped[box] & (nimage[box] == len(cov) - 1))):
            out.append((i, x[i], y[i], cov))
    return out


def _trail_distance(truth, ra, dec):
    """Distance (pixels) of sky positions from the satellite trail's centre line."""
    v = next(v for v in truth.visits if truth.visit(v).get("trail"))
    tv = truth.visit(v)
    tr = tv["trail"]
    fx, fy = cam.sky_to_focal(ra, dec, truth.camera.pixel_scale, truth.camera.k1,
                              tv["rotation"], tv["ra"], tv["dec"])
    th = np.radians(tr["angle_deg"])
    return np.abs(-(fx - tr["fx"]) * np.sin(th) + (fy - tr["fy"]) * np.cos(th))


def _aperture(img, x, y, r=15, r1=20, r2=25):
    """Aperture sum minus the mean of an annulus (linear in the image), windowed centroid."""
    ix, iy = int(round(x)), int(round(y))
    yy, xx = np.mgrid[iy - r2:iy + r2 + 1, ix - r2:ix + r2 + 1]
    sub = np.nan_to_num(img[iy - r2:iy + r2 + 1, ix - r2:ix + r2 + 1].astype(float))
    rr = np.hypot(xx - x, yy - y)
    sub = sub - sub[(rr > r1) & (rr < r2)].mean()
    cx, cy = x + 0.3, y - 0.3
    for _ in range(40):  # Gaussian-windowed centroid (SExtractor XWIN): unbiased
        w = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 2.5 ** 2)) * sub
        cx += 2 * np.sum(w * (xx - cx)) / np.sum(w)
        cy += 2 * np.sum(w * (yy - cy)) / np.sum(w)
    return sub[rr < r].sum(), cx, cy


def test_coadd_written_with_inputs_provenance_and_skip(coadd):
    assert "visit=1006 ccd=3: no CALEXP" in coadd["log"]
    with fits.open(coadd["path"]) as h:
        names = [x.name for x in h]
        for n in ("IMAGE", "MASK", "VARIANCE", "NIMAGE", "EXPTIME", "INPUTS"):
            assert n in names
        p = h[0].header
        assert p["MAGZERO"] == 27.0 and abs(p["FLUXMAG0"] - 10 ** 10.8) < 1
        assert p["CALIBSRC"] == "jointcal" and p["NSKIPPED"] == 1 and p["NVISITS"] == 4
        assert p["WARPERR"] < 0.01 and p["TASK"] == "coaddDriver"
        inp = h["INPUTS"].data
        assert len(inp) == 15 and (1006, 3) not in set(zip(inp["visit"], inp["ccd"]))
        assert np.all(inp["goodPix"] > 0) and np.all(inp["weight"] > 0)
        # the exposure-time map: 300 s per visit where all four contribute
        n = h["NIMAGE"].data
        assert np.allclose(h["EXPTIME"].data[n == 4], 1200.0)
        assert np.all(h["MASK"].data[n == 0] & (1 << h["MASK"].header["MP_NO_DATA"]))


def test_stars_at_true_positions_with_input_fluxes(coadd):
    truth = coadd["truth"]
    with fits.open(coadd["path"]) as h:
        img = h["IMAGE"].data
        wcs = WCS(h["IMAGE"].header)
        nimage = h["NIMAGE"].data
        clipped = (h["MASK"].data & (1 << h["MASK"].header["MP_CLIPPED"])) != 0
        weights = {int(v): float(w) for v, w in zip(h["INPUTS"].data["visit"],
                                                    h["INPUTS"].data["weight"])}
    stars = _stars(truth, wcs, nimage, clipped, coadd["calexps"])
    assert len(stars) >= 5, len(stars)
    scale = 10 ** (0.4 * 27.0) / 3631e9
    ratios, offsets = [], []
    for i, x, y, cov in stars:
        f, cx, cy = _aperture(img, x, y)
        offsets.append(np.hypot(cx - x, cy - y))
        # the same (linear) measurement on each visit's CALEXP (true calibration, nJy),
        # weighted as the coadd weights the visits: what a flux-conserving coadd at
        # ZP 27 must give
        num = den = 0.0
        for (v, c), e, px, py in cov:
            num += weights[v] * _aperture(e.image, px, py)[0]
            den += weights[v]
        ratios.append(f / (scale * num / den))
    ratios = np.array(ratios)
    assert np.all(np.abs(ratios - 1) < 0.01), ratios
    assert abs(np.median(ratios) - 1) < 0.005, ratios
    # true positions (sim truth): well under jointcal's accuracy (~0.05 px)
    assert np.median(offsets) < 0.02 and np.max(offsets) < 0.04, offsets


def test_satellite_trail_clipped(coadd):
    truth = coadd["truth"]
    trail_visit = next(v for v in truth.visits if truth.visit(v).get("trail"))
    with fits.open(coadd["path"]) as h:
        img = h["IMAGE"].data
        var = h["VARIANCE"].data
        mask = h["MASK"].data
        nimage = h["NIMAGE"].data
        clipped_bit = 1 << h["MASK"].header["MP_CLIPPED"]
        wcs = WCS(h["IMAGE"].header)
    yy, xx = np.nonzero(nimage >= 2)
    ra, dec = wcs.pixel_to_world_values(xx, yy)
    core = _trail_distance(truth, ra, dec) < 0.7
    # where the trail visit and at least two others cover the pixel (CALEXP footprints):
    # with 3 or more inputs MEANCLIP can tell the outlier
    cover = {}
    for (v, c), path in coadd["calexps"].items():
        e = read_exposure(path)
        px, py = e.wcs.world_to_pixel_values(ra[core], dec[core])
        inside = (px > 3) & (px < e.shape[1] - 4) & (py > 3) & (py < e.shape[0] - 4)
        cover[v] = cover.get(v, False) | inside
    n_cover = sum(cover.values())
    on = cover[trail_visit] & (n_cover >= 3)
    ty, tx = yy[core][on], xx[core][on]
    assert len(ty) > 100
    assert np.mean(mask[ty, tx] & clipped_bit != 0) > 0.9
    z = img[ty, tx] / np.sqrt(var[ty, tx])
    assert abs(np.median(z)) < 0.5


def test_bad_ids_end_in_one_line(coadd):
    from conftest import run_cmd

    p = run_cmd("coaddDriver.py", coadd["root"], "--rerun", "coadd", "--id", "tract=0",
                "patch=0,0", check=2)
    assert "give filter" in p.stderr and "Traceback" not in p.stderr
    p = run_cmd("coaddDriver.py", coadd["root"], "--rerun", "coadd", "--id", "tract=0",
                "filter=HSC-R", "patch=3,1", check=2)
    assert "tract 0 has patches 0..0,0..0" in p.stderr


def test_warps_written_on_request(coadd):
    from conftest import run_cmd

    root = coadd["root"]
    run_cmd("coaddDriver.py", root, "--rerun", "coadd:warps", "--id", "tract=0",
            "filter=HSC-R", "--selectId", "visit=1000^1002", "--config",
            "doWriteWarps=True", "statistic=MEDIAN", "--no-progress", check=0)
    repo = Repository(root, rerun="warps")
    with fits.open(repo.path("deepCoadd", filter="HSC-R", tract=0, patch="0,0")) as h:
        assert h[0].header["STATISTC"] == "MEDIAN" and h[0].header["NVISITS"] == 2
        coadd_wcs = WCS(h["IMAGE"].header)
    for visit in (1000, 1002):
        path = repo.path("deepCoadd_warp", filter="HSC-R", tract=0, patch="0,0",
                         visit=visit)
        with fits.open(path) as h:
            assert h[0].header["VISIT"] == visit
            x0, y0 = h[0].header["BBOX_X0"], h[0].header["BBOX_Y0"]
            img = h["IMAGE"].data
            nodata = (h["MASK"].data & (1 << 8)) != 0
            assert img.shape == h["VARIANCE"].data.shape and 0.2 < nodata.mean() < 0.9
            # the warp's WCS is the patch WCS shifted to its box
            w = WCS(h["IMAGE"].header)
            assert np.allclose(w.pixel_to_world_values(3.0, 4.0),
                               coadd_wcs.pixel_to_world_values(x0 + 3.0, y0 + 4.0))
