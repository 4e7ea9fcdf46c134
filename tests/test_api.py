"""The notebook API: run stages in-process and read their outputs."""
import numpy as np
import pytest

from tractpatch import api
from tractpatch.errors import UserError
from tractpatch.sim.truth import load_truth


def test_pipeline_through_the_api(tmp_path):
    root = tmp_path / "repo"
    assert api.run("makeDemoRepo", root, preset="tiny").status == 0
    s = api.run("detectSources", root, rerun="nb", id="filter=HSC-R")
    truth = load_truth(root)
    n_r = sum(1 for v in truth.visits if truth.visit(v)["filter"] == "HSC-R") * len(truth.ccds)
    assert (s.status, s.done, s.faulted) == (0, n_r, 0)
    assert api.run("makeDiscreteSkyMap", root, rerun="nb", id="filter=HSC-R^HSC-I").status == 0
    # tiny CCDs hold ~20 stars each: accept CCDs with fewer measurements
    s = api.run("jointcal", root, rerun="nb", id={"filter": "HSC-R", "tract": 0},
                config={"minMeasurementsPerCcd": 8})
    assert s.status == 0 and s.done == 1

    repo = api.open_repository(root, rerun="nb")
    rows = api.select(repo, "filter=HSC-R")
    assert len(rows) == n_r and {r["filter"] for r in rows} == {"HSC-R"}
    src = api.get_catalog(repo, "src", **rows[0])
    assert {"x", "y", "ra", "dec", "flux_psf", "is_star"} <= set(src.colnames)
    # the fitted WCS read back through the API agrees with the truth to a few mas
    wcs = api.get_wcs(repo, "jointcal_wcs", tract=0, **rows[0])
    x, y = np.array([10.0, 200.0]), np.array([20.0, 400.0])
    ra, dec = wcs.all_pix2world(x, y, 0)
    ra_t, dec_t = truth.pixel_to_sky(rows[0]["visit"], rows[0]["ccd"], x, y)
    sep_mas = np.hypot((ra - ra_t) * np.cos(np.radians(dec_t)), dec - dec_t) * 3.6e6
    assert np.all(sep_mas < 30)
    pc = api.get_photo_calib(repo, "jointcal_photoCalib", tract=0, **rows[0])
    assert pc.mean > 0


def test_api_errors_raise(tmp_path):
    with pytest.raises(UserError, match="unknown command"):
        api.run("nosuchTask", tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        api.run("detectSources", tmp_path / "missing", rerun="x", id="visit=1")
    root = tmp_path / "r"
    root.mkdir()
    repo = api.open_repository(root, rerun="x")
    with pytest.raises(UserError, match="not found"):
        api.get_catalog(repo, "src", visit=1, ccd=0, pointing=0, filter="r")
