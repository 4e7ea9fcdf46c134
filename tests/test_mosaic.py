"""mosaic.py end to end on the simulator (catalog-only SRC files), scored on its truth;
jointcal.py and mosaic.py with --diagnostics in one rerun; a broken fit in the diagnostics.
"""
from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from astropy.io import fits
from matplotlib.image import imread

from tractpatch.errors import UserError

VISITS = (1000, 1002, 1004)
GLOBAL_FILES = {"DFlux2D.png", "ResFlux.png", "MdM.png", "PosDPos.png",
                "ResPosScatter.png", "catalog.fits", "ccd.dat", "ccdScale.dat",
                "coeffs.dat", "dmag.dat", "dpos.dat", "residualStats.yaml", "index.html"}


@pytest.fixture(scope="module")
def sim_repo(tmp_path_factory):
    from tests.conftest import make_catalog_survey

    return make_catalog_survey(tmp_path_factory.mktemp("mosaic") / "repo", visits=3)


@pytest.fixture(scope="module")
def both_runs(sim_repo):
    """jointcal.py then mosaic.py (2 reader processes) into one rerun, both --diagnostics."""
    from tests.conftest import run_cmd

    run_cmd("makeDiscreteSkyMap.py", sim_repo, "--rerun", "sim:fit", "--id",
            "filter=HSC-I", "--no-progress", check=0)
    jc = run_cmd("jointcal.py", sim_repo, "--rerun", "fit", "--id", "tract=0",
                 "--no-progress", "--diagnostics", check=0)
    mo = run_cmd("mosaic.py", sim_repo, "--rerun", "fit", "--id", "tract=0",
                 "--no-progress", "--diagnostics", "-j", "2", check=0)
    return sim_repo / "rerun" / "fit", jc, mo


def test_mosaic_matches_truth(sim_repo, both_runs):
    from tractpatch.diagnostics.truth_score import score_calibrations
    from tractpatch.sim.truth import load_truth

    rerun, _, mo = both_runs
    out = rerun / "mosaic-results" / "0"
    s = score_calibrations(out, load_truth(sim_repo / "sim"), prefix="mosaic")
    assert len(s["per_ccd"]) == 18
    # measured 0.66 mas RMS (worst CCD 1.4 mas) and 1.4 mmag (worst CCD 2.4 mmag)
    assert s["mosaic WCS vs true mapping (RMS over all CCDs)"]["value"] < 2.0
    assert max(r["wcs_rms_mas"] for r in s["per_ccd"]) < 3.0
    assert s["mosaic flux calibration vs truth (RMS)"]["value"] < 3.0
    assert max(r["calib_rms_mmag"] for r in s["per_ccd"]) < 4.0
    for p in out.glob("mosaic_wcs-*.fits"):
        h = fits.getheader(p)
        assert h["TASK"] == "mosaic" and h["JCWCSRES"] < 1.0, p.name
    assert "fittingOrder 9" in mo.stderr  # HSC's order: enough stars here


def test_both_result_sets_kept(both_runs):
    rerun, jc, _ = both_runs
    for prefix in ("jointcal", "mosaic"):
        out = rerun / f"{prefix}-results" / "0"
        assert len(list(out.glob(f"{prefix}_wcs-*.fits"))) == 18
        assert len(list(out.glob(f"{prefix}_photoCalib-*.fits"))) == 18
        m = yaml.safe_load((out / f"{prefix}_metrics-HSC-I.yaml").read_text())
        assert m["prepared_ccdImages"] == 18
        assert 0.5 < m["final_chi2"] / m["final_ndof"] < 1.5
        assert set(m["astrometry_rms_ref_mas_per_visit"]) == set(VISITS)


def test_calibration_source_reads_mosaic(sim_repo, both_runs):
    """calibrateExposure's loader takes mosaic results when asked and refuses `auto`."""
    from tractpatch.calibrate.sources import load_calibration
    from tractpatch.repo import Repository
    from tractpatch.sim.truth import load_truth

    repo = Repository(sim_repo)
    repo.set_rerun("fit")
    row = next(r for r in repo.registry.exposures(None)
               if r["visit"] == 1002 and r["ccd"] == 3)
    with pytest.raises(UserError, match="both jointcal and mosaic"):
        load_calibration(repo, row, 0, SimpleNamespace(calibSource="auto"))
    cal = load_calibration(repo, row, 0, SimpleNamespace(calibSource="mosaic"))
    assert cal.source == "mosaic" and "mosaic_wcs-0001002-003" in cal.wcs_file
    truth = load_truth(sim_repo / "sim")
    x, y = np.meshgrid(np.linspace(0, 2047, 5), np.linspace(0, 4175, 9))
    ra, dec = cal.wcs.all_pix2world(x.ravel(), y.ravel(), 0)
    tra, tdec = truth.pixel_to_sky(1002, 3, x.ravel(), y.ravel())
    sep = np.hypot((ra - tra) * np.cos(np.radians(dec)), dec - tdec) * 3.6e6
    assert sep.max() < 10.0
    dm = 2.5e3 * np.log10(cal.photo_calib.evaluate(x.ravel(), y.ravel())
                          / truth.calibration(1002, 3, x.ravel(), y.ravel()))
    assert np.abs(dm).max() < 10.0


@pytest.mark.parametrize("prefix", ["jointcal", "mosaic"])
def test_diagnostics_written_by_both_solvers(both_runs, prefix):
    rerun = both_runs[0]
    out = rerun / f"{prefix}-results" / "0" / "diagnostics-HSC-I"
    metrics = yaml.safe_load((rerun / f"{prefix}-results" / "0" /
                              f"{prefix}_metrics-HSC-I.yaml").read_text())
    per_visit = {f"{k}_{v}.png" for v in VISITS for k in ("ResPosArrow2D", "fcont", "jcont")}
    assert {p.name for p in out.iterdir()} == GLOBAL_FILES | per_visit
    for p in out.glob("*.png"):
        rgb = imread(p)[..., :3]
        assert rgb.std() > 0.05 and (rgb.mean(axis=2) < 0.5).mean() > 0.003, p.name
    n = metrics["n_measurements"]
    assert np.loadtxt(out / "dpos.dat").shape == (n, 11)
    assert np.loadtxt(out / "dmag.dat").shape == (n, 10)
    assert np.loadtxt(out / "ccd.dat", ndmin=2).shape == (6, 4)
    with fits.open(out / "catalog.fits") as h:
        assert len(h[1].data) == metrics["prepared_fittedStars"]
    html = (out / "index.html").read_text()
    assert prefix in html and "ResPosArrow2D_1004.png" in html
    stats = yaml.safe_load((out / "residualStats.yaml").read_text())
    # the written residuals are the fit's: their RMS is the fit's internal RMS
    rms = np.sqrt(np.mean([v["rms_pos"] ** 2 * v["n"] for v in stats["per_ccd"].values()])
                  / np.mean([v["n"] for v in stats["per_ccd"].values()]))
    assert rms == pytest.approx(metrics["astrometry_rms_internal_mas"], rel=0.05)


def test_broken_ccd_shows_in_diagnostics(sim_repo, both_runs, tmp_path):
    """One CCD's fitted rotation spoiled by 60" before the diagnostics are written (the
    task's own path: read, fit, outputs, --diagnostics into --diagDir): its ResPosArrow2D
    arrows turn about its centre and its residual statistics grow."""
    from tractpatch.diagnostics import plots_visit
    from tractpatch.jointcal import mosaic_solver
    from tractpatch.jointcal.config import MosaicConfig
    from tractpatch.jointcal.mosaic_task import MosaicTask
    from tractpatch.repo import Repository

    eps = np.radians(60.0 / 3600)
    repo = Repository(sim_repo)
    repo.set_rerun("fit:broken")
    cfg = MosaicConfig(fittingOrder=5, fluxFitOrder=2)
    task = MosaicTask(repo, cfg, {"diagnostics": True, "diagDir": str(tmp_path)})
    captured = {}

    def broken_fit(det, images, refcat):
        res = mosaic_solver.fit_mosaic(det, images, refcat, cfg)
        c = res.astro_model.image_ccd[res.image_index(1002, 4)]
        res.astro_model.placement(res.astro_theta)[c, 2] += eps
        captured["res"] = res
        return res

    task.fit = broken_fit
    task.run_unit({"tract": 0, "filter": "HSC-I", "visit": "1002^1004",
                   "ccd": "0^1^2^3^4^5"})
    assert {p.name for p in tmp_path.glob("ResPosArrow2D_*.png")} == \
        {"ResPosArrow2D_1002.png", "ResPosArrow2D_1004.png"}
    st = yaml.safe_load((tmp_path / "residualStats.yaml").read_text())
    rms = {c: v["rms_pos"] for c, v in st["per_ccd"].items()}
    assert max(rms, key=rms.get) == 4
    assert rms[4] > 2 * np.median([v for c, v in rms.items() if c != 4])
    ccd = np.loadtxt(tmp_path / "ccd.dat", ndmin=2)
    cx, cy = ccd[ccd[:, 0] == 4, 1:3][0]
    from tractpatch.jointcal.diagnostics_adapter import fit_diagnostics

    data = fit_diagnostics(captured["res"], "mosaic", 0, "HSC-I")
    a = plots_visit.arrow_data(data, 1002, max_arrows=100000)
    on = a["ccd"] == 4
    rx, ry = (a["fx"][on] - cx) * 3.6e6, (a["fy"][on] - cy) * 3.6e6  # mas
    # measured - model = (R(eps) - I) (f - centre) = eps (-ry, rx): the spoiled turn
    curl = np.mean(a["dx"][on] * ry - a["dy"][on] * rx) / np.mean(rx ** 2 + ry ** 2)
    assert curl == pytest.approx(-eps, rel=0.15)
    assert np.mean(a["length"][on]) > 2 * np.mean(a["length"][~on])


def test_unreadable_src_is_reported_not_fatal(sim_repo, tmp_path):
    """read_src_many (what -j parallelises; the CLI runs above use -j 2) returns the
    one-line error of a bad file in its place and reads the others."""
    from tractpatch.jointcal.inputs import read_src_many

    bad = tmp_path / "SRC-0001000-009.fits"
    bad.write_bytes(b"not a FITS file")
    paths = sorted((sim_repo / "rerun" / "sim").rglob("SRC-*.fits"))[:2]
    got = read_src_many([paths[0], bad, paths[1]], 10.0, True, processes=1)
    assert isinstance(got[1], str) and "SRC-0001000-009.fits" in got[1] \
        and "detectSources.py" in got[1]
    assert got[0][1].nx == 2048 and got[2][1].ny == 4176 and len(got[0][0]) > 50


def test_missing_tract_is_one_line_error(sim_repo, capsys):
    from tractpatch.jointcal.mosaic_task import MosaicTask

    assert MosaicTask.main([str(sim_repo), "--rerun", "mo2", "--id", "visit=1000"]) == 2
    err = capsys.readouterr().err
    assert "mosaic needs a tract" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_order_lowered_when_data_are_few(caplog):
    from tractpatch.jointcal.mosaic_models import supported_order

    # order 9 has 55 terms: 3 per term needs 165 measurements in the poorest visit
    assert supported_order(9, [400, 165], 3.0, "fittingOrder") == 9
    with caplog.at_level(logging.WARNING, logger="mosaic"):
        # 100 measurements: order 6 (28 terms, 84) fits, order 7 (36 terms, 108) does not
        assert supported_order(9, [400, 100], 3.0, "fittingOrder") == 6
    assert "fitting order 6 instead" in caplog.text
    assert re.search(r"order 9 needs 165", caplog.text)


def test_outliers_rejected_robustly():
    """3 % of the detections moved by 0.5 arcsec (100x the noise): the robust clipping
    finds them and the WCS stays on the truth."""
    from tractpatch.jointcal.config import MosaicConfig
    from tractpatch.jointcal.mosaic_solver import fit_mosaic
    from tractpatch.jointcal.synthetic import make_synthetic

    det, images, ref, truth = make_synthetic(n_visits=4, ccd_grid=(3, 2), stars_per_ccd=250,
                                             seed=11)
    rng = np.random.default_rng(0)
    bad = rng.choice(len(det), size=len(det) * 3 // 100, replace=False)
    det.x[bad] += 2.5  # pixels of 0.2 arcsec
    res = fit_mosaic(det, images, ref, MosaicConfig(fittingOrder=4, fluxFitOrder=2))
    m = res.meas
    # identify the moved detections among the measurements by their (visit, ccd, y)
    vis = np.array([im.visit for im in res.images])[m.img]
    ccd = np.array([im.ccd for im in res.images])[m.img]
    ny = np.array([im.ny for im in res.images])[m.img]
    y = m.v * ny / 2 + ny / 2 - 0.5
    moved_keys = set(zip(det.visit[bad].tolist(), det.ccd[bad].tolist(),
                         np.round(det.y[bad], 4).tolist()))
    moved = np.array([k in moved_keys for k in zip(vis.tolist(), ccd.tolist(),
                                                     np.round(y, 4).tolist())])
    assert moved.sum() > 100
    rejected = ~res.astro_active
    assert rejected[moved].mean() > 0.95
    assert rejected[~moved].mean() < 0.01
    worst = truth.score(res, n=8, photometry=False)[0].max()
    assert worst < 3.0
