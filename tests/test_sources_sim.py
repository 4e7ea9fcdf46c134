"""detectSources against the survey simulator's truth (tractpatch.sim).

One field, one CCD (256x512), two visits (HSC-R, HSC-I) of the ``tiny`` preset: Moffat
(beta = 3) stars, Sersic galaxies, cosmic rays, saturation, Poisson + read noise.
"""
from __future__ import annotations

import numpy as np
import pytest

from tractpatch.repo import Repository
from tractpatch.sim import make_demo_repo, preset_config
from tractpatch.sources.catalog import read_src
from tractpatch.sources.task import DetectSourcesConfig, DetectSourcesTask

PIXEL_SCALE = 0.168  # arcsec, the simulator's camera
BETA = 3.0


def _mad(a):
    return 1.4826 * np.median(np.abs(a - np.median(a)))


@pytest.fixture(scope="module")
def matched(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    cfg = preset_config("tiny", ["n_ccds=1", "n_fields=1", "visits_per_field=1"])
    demo = make_demo_repo(root, config=cfg, seed=3)
    truth = demo.truth
    repo = Repository(root, rerun="det")
    task = DetectSourcesTask(repo, DetectSourcesConfig())
    out = []
    for row in repo.registry.exposures():
        did = {k: row[k] for k in ("visit", "ccd", "filter", "pointing", "field")}
        task.run_unit(did)
        t, h = read_src(repo.find("src", **did))
        idx, tx, ty = truth.objects_on(row["visit"], row["ccd"])
        counts = truth.true_counts(row["visit"], row["ccd"], idx, tx, ty)
        is_true_star = np.asarray(truth.objects["type"])[idx] == "star"
        d = np.hypot(tx[None, :] - t["x"][:, None], ty[None, :] - t["y"][:, None])
        j = np.argmin(d, axis=1)
        ok = d[np.arange(len(t)), j] < 1.5
        # isolated: no object brighter than 5% of it within 12 px
        dd = np.hypot(tx[None, :] - tx[:, None], ty[None, :] - ty[:, None])
        np.fill_diagonal(dd, np.inf)
        iso = np.min(np.where(counts[None, :] > 0.05 * counts[:, None], dd, np.inf),
                     axis=1) > 12
        fwhm_true = truth.psf_fwhm(row["visit"], row["ccd"], tx, ty) / PIXEL_SCALE
        alpha = fwhm_true / (2 * np.sqrt(2 ** (1 / BETA) - 1))
        in12 = 1 - (1 + (12 / alpha) ** 2) ** (1 - BETA)  # Moffat flux within 12 px
        out.append(dict(t=t, h=h, j=j, ok=ok, star=is_true_star[j], iso=iso[j],
                        x=tx[j], y=ty[j], flux12=(counts * in12)[j],
                        fwhm=np.median(fwhm_true), repo=repo, visit=row["visit"]))
    return out


def _clean_stars(m, snr=10):
    t = m["t"]
    return m["ok"] & m["star"] & m["iso"] & (t["flags"] == 0) & (t["snr"] > snr)


def test_positions_match_truth_within_errors(matched):
    px, py = [], []
    for m in matched:
        sel = _clean_stars(m)
        t = m["t"]
        px.append(((t["x"] - m["x"]) / t["x_err"])[sel])
        py.append(((t["y"] - m["y"]) / t["y_err"])[sel])
    px, py = np.concatenate(px), np.concatenate(py)
    assert len(px) >= 30
    for p in (px, py):
        assert abs(np.median(p)) < 0.35
        assert 0.6 < _mad(p) < 1.4, _mad(p)


def test_fluxes_match_truth(matched):
    for m in matched:
        sel = _clean_stars(m, snr=20)
        t = m["t"]
        # the simulator's Moffat stars: flux within 12 px is known analytically
        r = t["flux_ap_12"][sel] / m["flux12"][sel]
        assert np.median(r) == pytest.approx(1.0, abs=0.015)
        # flux_psf is on the largest aperture's scale through the aperture correction
        r = t["flux_psf"][sel] / m["flux12"][sel]
        assert np.median(r) == pytest.approx(1.0, abs=0.02)


def test_psf_fwhm_and_star_galaxy(matched):
    for m in matched:
        # adaptive moments of a beta=3 Moffat sit ~12% above its FWHM (wings)
        assert m["h"]["PSFFWPIX"] == pytest.approx(m["fwhm"], rel=0.2)
        assert m["h"]["PSFFWHM"] == pytest.approx(m["h"]["PSFFWPIX"] * PIXEL_SCALE,
                                                  rel=1e-3)
        sel = _clean_stars(m, snr=20)
        assert np.mean(m["t"]["is_star"][sel]) > 0.9
        # cosmic rays (masked CR by the simulator) are never stars
        cr = m["t"]["flag_cr"] & ~m["ok"]
        assert cr.sum() >= 3 and not np.any(m["t"]["is_star"][cr])
    summ = {s["visit"]: s for s in matched[0]["repo"].registry.ccd_summaries("det")}
    for m in matched:
        assert summ[m["visit"]]["psf_fwhm"] == pytest.approx(m["h"]["PSFFWHM"])
        assert summ[m["visit"]]["n_stars"] == int(np.sum(m["t"]["is_star"]))
