"""Diagnostics of a joint fit (issue 7): the data structure, plots, data files, index.html.

A synthetic fit with known truth drives everything: a camera of rectangular CCDs, a radial
distortion (known relative pixel area), per-visit flux corrections and scales, per-CCD
scales, Gaussian noise of known sigma, flagged outliers, and optionally one CCD whose
fitted rotation is wrong by 20 arcsec about its centre.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from astropy.io import ascii as astro_ascii
from astropy.io import fits
from matplotlib.image import imread

from tractpatch.diagnostics import datafiles, plots_global, plots_visit
from tractpatch.diagnostics.fitdata import (MAS_PER_DEG, FitDiagnostics,
                                            build_fit_diagnostics, ccd_outline, inside_ccds,
                                            star_means)
from tractpatch.diagnostics.writer import residual_stats, write_diagnostics
from tractpatch.errors import UserError

PIX_ARCSEC = 0.17
NX, NY = 2048, 4096
SIGMA_POS = 5.0      # mas, per coordinate
K_DIST = 0.012       # radial distortion, deg^-2
BROKEN_ARCSEC = 20.0


def make_synthetic(n_star=6000, n_visit=4, ncx=4, ncy=2, broken_ccd=None, seed=1):
    """A synthetic fit with known truth; returns (FitDiagnostics, truth dict)."""
    rng = np.random.default_rng(seed)
    w, h = NX * PIX_ARCSEC / 3600, NY * PIX_ARCSEC / 3600
    gap = 0.004
    ix, iy = np.meshgrid(np.arange(ncx), np.arange(ncy))
    # the top-left CCD is missing (as in round cameras): no focal-plane map there
    keep = np.r_[np.arange(ncx * (ncy - 1)), np.arange(ncx * (ncy - 1) + 1, ncx * ncy)]
    ccd_id = (np.arange(ncx * ncy) + 10)[keep]
    cfx = ((ix.ravel() - (ncx - 1) / 2) * (w + gap))[keep]
    cfy = ((iy.ravel() - (ncy - 1) / 2) * (h + gap))[keep]
    angle = rng.uniform(-0.02, 0.02, ccd_id.size)            # deg
    ccd_scale = 1 + rng.normal(0, 0.03, ccd_id.size)
    visit_id = 1000 + 2 * np.arange(n_visit)
    visit_scale = 1 + rng.normal(0, 0.02, n_visit)
    poly = rng.normal(0, 0.02, (n_visit, 3))                 # flux map: 1 + a fx + b fy + c r^2
    dither = rng.uniform(-0.1, 0.1, (n_visit, 2))

    def area(fx, fy):
        r2 = fx ** 2 + fy ** 2  # map f -> f (1 + k r^2): Jacobian det, 1 at the centre
        return (1 + K_DIST * r2) * (1 + 3 * K_DIST * r2)

    def poly_part(iv, fx, fy):
        a, b, c = poly[iv]
        return 1 + a * fx + b * fy + c * (fx ** 2 + fy ** 2)

    half = np.array([ncx * (w + gap), ncy * (h + gap)]) / 2 + 0.12
    sx, sy = rng.uniform(-half[0], half[0], n_star), rng.uniform(-half[1], half[1], n_star)
    true_mag = rng.uniform(17, 23, n_star)
    is_ref_star = rng.random(n_star) < 0.6
    ref_mag_star = np.where(is_ref_star, true_mag + rng.normal(0, 0.005, n_star), np.nan)

    cols = {k: [] for k in ("visit", "ccd", "star", "x", "y", "fx", "fy")}
    for iv, v in enumerate(visit_id):  # one vectorised pass per visit and CCD
        fx, fy = sx - dither[iv, 0], sy - dither[iv, 1]
        for ic, c in enumerate(ccd_id):
            ca, sa = np.cos(np.radians(angle[ic])), np.sin(np.radians(angle[ic]))
            u = ca * (fx - cfx[ic]) + sa * (fy - cfy[ic])
            t = -sa * (fx - cfx[ic]) + ca * (fy - cfy[ic])
            on = np.flatnonzero((np.abs(u) < w / 2) & (np.abs(t) < h / 2))
            cols["visit"].append(np.full(on.size, v))
            cols["ccd"].append(np.full(on.size, c))
            cols["star"].append(on)
            cols["x"].append(u[on] * 3600 / PIX_ARCSEC + NX / 2 - 0.5)
            cols["y"].append(t[on] * 3600 / PIX_ARCSEC + NY / 2 - 0.5)
            cols["fx"].append(fx[on])
            cols["fy"].append(fy[on])
    m = {k: np.concatenate(v) for k, v in cols.items()}
    n = m["visit"].size
    m["dx"] = rng.normal(0, SIGMA_POS, n)
    m["dy"] = rng.normal(0, SIGMA_POS, n)
    m["rejected"] = rng.random(n) < 0.02
    m["dx"][m["rejected"]] *= 30  # outliers the fit flagged
    m["is_ref"] = is_ref_star[m["star"]]
    m["mag_err"] = 0.003 + 0.02 * 10 ** (0.4 * (true_mag[m["star"]] - 23))
    m["mag"] = true_mag[m["star"]] + rng.normal(0, 1, n) * m["mag_err"]
    if broken_ccd is not None:
        # the fit's rotation of this CCD is off by eps: residual = -(eps x (f - centre))
        eps = np.radians(BROKEN_ARCSEC / 3600)
        ic = int(np.flatnonzero(ccd_id == broken_ccd)[0])
        on = m["ccd"] == broken_ccd
        m["dx"][on] += eps * (m["fy"][on] - cfy[ic]) * MAS_PER_DEG
        m["dy"][on] -= eps * (m["fx"][on] - cfx[ic]) * MAS_PER_DEG
    ra0, dec0 = 150.0, 2.0
    data = build_fit_diagnostics(
        solver="jointcal", tract=9813, filter="HSC-I", meas=m, ccd_id=ccd_id, ccd_fx=cfx,
        ccd_fy=cfy, ccd_angle=angle, ccd_size_deg=(w, h), ccd_scale=ccd_scale,
        visit_id=visit_id, visit_scale=visit_scale,
        coeffs={int(v): {"astrometry": rng.normal(0, 1e-4, 20), "photometry": poly[i]}
                for i, v in enumerate(visit_id)},
        flux_corr=lambda v, fx, fy: area(fx, fy) * poly_part(int((v - 1000) // 2), fx, fy),
        pixel_area=lambda v, fx, fy: area(fx, fy),
        star_ra=ra0 + sx / np.cos(np.radians(dec0)), star_dec=dec0 + sy,
        ref_mag=ref_mag_star[m["star"]], grid_n=31)
    data.extra["chi2/ndof"] = 1.0625
    truth = dict(w=w, h=h, poly_part=poly_part, area=area, ref_mag=ref_mag_star,
                 true_mag=true_mag)
    return data, truth


@pytest.fixture(scope="module")
def good():
    return make_synthetic()


@pytest.fixture(scope="module")
def broken():
    return make_synthetic(broken_ccd=13, seed=2)


@pytest.fixture(scope="module")
def written(good, tmp_path_factory):
    out = tmp_path_factory.mktemp("diag")
    t0 = time.process_time()  # CPU time: other users of the machine do not count
    files = write_diagnostics(good[0], out)
    return out, files, time.process_time() - t0


# --------------------------------------------------------------------- data structure


def test_ccd_outline_by_hand():
    c = ccd_outline([1.0], [2.0], [90.0], [0.2], [0.4])[0]
    # rotated by 90 deg: the CCD's x extent (0.2) lies along fy
    np.testing.assert_allclose(c, [[1.2, 1.9], [1.2, 2.1], [0.8, 2.1], [0.8, 1.9]], atol=1e-12)
    assert inside_ccds(np.array([1.1, 1.3]), np.array([2.0, 2.0]), c[None]).tolist() == \
        [True, False]


def test_star_means_by_hand():
    mean, err, nobs = star_means(np.array([0, 0, 0, 1]), np.array([20.0, 21.0, 30.0, 18.0]),
                                 np.array([0.1, 0.2, 0.1, 0.05]),
                                 np.array([False, False, True, False]), 3)
    # weights 100 and 25: (2000 + 525) / 125 = 20.2; error 1/sqrt(125)
    np.testing.assert_allclose(mean[:2], [20.2, 18.0])
    np.testing.assert_allclose(err[:2], [1 / np.sqrt(125), 0.05])
    assert nobs.tolist() == [2, 1, 0] and np.isnan(mean[2])


def test_build_fills_residuals_and_maps(good):
    data, truth = good
    ok = data.is_ref
    np.testing.assert_allclose(data.dmag[ok], data.mag[ok] - truth["ref_mag"][data.star[ok]])
    internal = ~data.is_ref
    np.testing.assert_allclose(data.dmag[internal],
                               data.mag[internal] - data.star_mag[data.star[internal]])
    # the flux correction per unit area is the known polynomial part (pixel area divided out)
    GX, GY = np.meshgrid(data.grid_fx, data.grid_fy)
    p = truth["poly_part"](1, GX, GY)
    inside = np.isfinite(data.flux_corr[1])
    expect = 100 * (p / np.median(p[inside]) - 1)
    np.testing.assert_allclose(plots_visit.flux_per_area(data, 1)[inside], expect[inside],
                               atol=1e-9)
    np.testing.assert_allclose(data.pixel_area[1][inside], truth["area"](GX, GY)[inside])
    # visit flux maps: s_v P_v J / mean_v(s_v P_v J) - 1
    tot = np.array([data.visit_scale[i] * truth["poly_part"](i, GX, GY)
                    for i in range(data.visit_id.size)])
    np.testing.assert_allclose(plots_global.visit_flux_maps(data)[:, inside],
                               (100 * (tot / tot.mean(axis=0) - 1))[:, inside], atol=1e-9)
    # NaN only outside the camera (where CCD 14 is missing), not in the gaps between CCDs
    missing = (GX < -truth["w"] - 0.03) & (GY > 0.03)
    near = (np.abs(GX) < 0.01) | (np.abs(GY) < 0.01)
    assert np.isnan(data.flux_corr[0][missing]).all() and missing.any()
    assert np.isfinite(data.flux_corr[0][near & (GX > -truth["w"])]).all()


def test_bad_input_is_one_line_naming_field(good):
    data, _ = good
    with pytest.raises(UserError, match="'dy' has shape"):
        FitDiagnostics(**{**{k: getattr(data, k) for k in data.__dataclass_fields__},
                          "dy": data.dy[:-1]})
    with pytest.raises(UserError, match=r"\['mag_err'\] missing"):
        build_fit_diagnostics(solver="mosaic", tract=0, filter="r",
                              meas={k: getattr(data, k) for k in (
                                  "visit", "ccd", "star", "x", "y", "fx", "fy", "dx", "dy",
                                  "is_ref", "rejected", "mag")},
                              ccd_id=data.ccd_id, ccd_fx=data.ccd_fx, ccd_fy=data.ccd_fy,
                              ccd_angle=data.ccd_angle, ccd_size_deg=(0.1, 0.2),
                              ccd_scale=data.ccd_scale, visit_id=data.visit_id,
                              visit_scale=data.visit_scale, coeffs={}, flux_corr=None,
                              pixel_area=None, star_ra=data.star_ra, star_dec=data.star_dec)
    with pytest.raises(UserError, match="not in ccd_id"):
        FitDiagnostics(**{**{k: getattr(data, k) for k in data.__dataclass_fields__},
                          "ccd": np.where(data.ccd == 10, 99, data.ccd)})


# --------------------------------------------------------------------- statistics


def test_clipped_stats_known_answer():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(3.0, 2.0, 200000), rng.uniform(100, 200, 2000)])
    mean, sig, n = datafiles.clipped_stats(x)
    # a 3-sigma clip keeps 99.73 % of a Gaussian, whose std is then 0.9866 sigma
    assert abs(mean - 3.0) < 0.02 and abs(sig - 2.0 * 0.9866) < 0.02
    assert abs(n - 200000 * 0.9973) < 400


def test_residual_stats_match_injected_noise(good):
    data, _ = good
    st = residual_stats(data)
    for name in ("all", "ref", "internal"):
        c = st["clipped"][name]
        assert abs(c["sigma_dx"] - SIGMA_POS * 0.9866) < 0.15, (name, c)
        assert abs(c["sigma_dy"] - SIGMA_POS * 0.9866) < 0.15, (name, c)
    assert st["clipped"]["ref"]["n"] + st["clipped"]["internal"]["n"] == \
        st["clipped"]["all"]["n"] == int((~data.rejected).sum())
    rms = np.array([v["rms_pos"] for v in st["per_ccd"].values()])
    np.testing.assert_allclose(rms, np.sqrt(2) * SIGMA_POS, rtol=0.08)


def test_broken_ccd_rotation_in_statistics(broken):
    data, truth = broken
    st = residual_stats(data)
    rms2 = {c: v["rms_pos"] ** 2 for c, v in st["per_ccd"].items()}
    others = np.median([v for c, v in rms2.items() if c != 13])
    # a rotation eps about the centre of a w x h CCD adds eps^2 (w^2 + h^2) / 12 (uniform
    # stars) to the mean squared residual
    eps_mas = np.radians(BROKEN_ARCSEC / 3600) * MAS_PER_DEG
    expect = eps_mas ** 2 * (truth["w"] ** 2 + truth["h"] ** 2) / 12
    assert rms2[13] - others == pytest.approx(expect, rel=0.12)
    assert st["per_ccd"][13]["rms_pos"] > 2.5 * np.sqrt(others)
    assert max(st["per_ccd"], key=lambda c: st["per_ccd"][c]["rms_pos"]) == 13
    # every visit contains the broken CCD, so visits stay alike
    pv = [v["rms_pos"] for v in st["per_visit"].values()]
    assert max(pv) / min(pv) < 1.3


def test_broken_ccd_rotation_in_arrows(broken):
    data, truth = broken
    v = int(data.visit_id[0])
    a = plots_visit.arrow_data(data, v, max_arrows=100000)
    mean_len = {c: a["length"][a["ccd"] == c].mean() for c in np.unique(a["ccd"])}
    good_len = np.median([L for c, L in mean_len.items() if c != 13])
    # noise only: mean length of a 2-d Gaussian vector is sigma sqrt(pi/2)
    assert good_len == pytest.approx(SIGMA_POS * np.sqrt(np.pi / 2), rel=0.1)
    assert mean_len[13] > 3 * good_len
    # arrows point along the rotation field: tangential, perpendicular to (f - centre)
    ic = int(np.flatnonzero(data.ccd_id == 13)[0])
    on = a["ccd"] == 13
    rx, ry = a["fx"][on] - data.ccd_fx[ic], a["fy"][on] - data.ccd_fy[ic]
    curl = np.mean(a["dx"][on] * ry - a["dy"][on] * rx) / np.mean(rx ** 2 + ry ** 2)
    assert curl / MAS_PER_DEG == pytest.approx(np.radians(BROKEN_ARCSEC / 3600), rel=0.1)
    # subsampling caps the arrows drawn, seeded (same answer twice)
    small = plots_visit.arrow_data(data, v, max_arrows=200)
    assert small["fx"].size == 200
    np.testing.assert_array_equal(small["fx"], plots_visit.arrow_data(data, v, 200)["fx"])
    # rejected outliers (30 sigma) are not drawn
    assert a["length"][a["ccd"] != 13].max() < 8 * SIGMA_POS


def test_broken_fit_written_for_one_visit(broken, tmp_path):
    data, _ = broken
    v = int(data.visit_id[1])
    files = write_diagnostics(data, tmp_path, visits=[v])
    names = {p.name for p in files}
    assert {f"ResPosArrow2D_{v}.png", f"fcont_{v}.png", f"jcont_{v}.png"} <= names
    assert not any(n.startswith("ResPosArrow2D_") and n != f"ResPosArrow2D_{v}.png"
                   for n in names)
    import yaml
    st = yaml.safe_load((tmp_path / "residualStats.yaml").read_text())
    assert max(st["per_ccd"], key=lambda c: st["per_ccd"][c]["rms_pos"]) == 13
    assert "13 (" in (tmp_path / "index.html").read_text()  # listed among the worst CCDs
    with pytest.raises(UserError, match="not in the fit"):
        write_diagnostics(data, tmp_path, visits=[5])


# --------------------------------------------------------------------- files


def expected_names(data):
    per_visit = [f"{k}_{v}.png" for v in data.visit_id
                 for k in ("ResPosArrow2D", "fcont", "jcont")]
    return set(per_visit) | {"DFlux2D.png", "ResFlux.png", "MdM.png", "PosDPos.png",
                             "ResPosScatter.png", "catalog.fits", "ccd.dat", "ccdScale.dat",
                             "coeffs.dat", "dmag.dat", "dpos.dat", "residualStats.yaml",
                             "index.html"}


def test_every_file_written(good, written):
    data, _ = good
    out, files, _ = written
    assert {p.name for p in files} == expected_names(data)
    assert all(p.parent == out and p.is_file() for p in files)
    assert not list(out.glob(".tmp-*")), "no temporary files left"


def test_pngs_are_not_blank(written):
    out, files, _ = written
    for p in files:
        if p.suffix != ".png":
            continue
        img = imread(p)
        assert img.shape[0] >= 500 and img.shape[1] >= 600, (p.name, img.shape)
        rgb = img[..., :3]
        # a blank or single-colour image has (near) zero spread; real plots have lines,
        # text and filled areas
        assert rgb.std() > 0.05, (p.name, rgb.std())
        assert (rgb.mean(axis=2) < 0.5).mean() > 0.003, f"{p.name}: no dark ink (text/lines)"
        assert 20_000 < p.stat().st_size < 3_000_000, (p.name, p.stat().st_size)


def test_dat_files_parse_with_expected_rows(good, written):
    data, _ = good
    out, _, _ = written
    dpos = np.loadtxt(out / "dpos.dat")
    assert dpos.shape == (data.n_meas, 11)
    np.testing.assert_allclose(dpos[:, 7], data.dx, atol=6e-4)
    np.testing.assert_array_equal(dpos[:, 10].astype(bool), data.rejected)
    dmag = np.loadtxt(out / "dmag.dat")
    assert dmag.shape == (data.n_meas, 10)
    np.testing.assert_allclose(dmag[:, 6], data.dmag, atol=6e-6)
    ccd = np.loadtxt(out / "ccd.dat", ndmin=2)
    assert ccd.shape == (data.ccd_id.size, 4)
    np.testing.assert_allclose(ccd[:, 1:], np.c_[data.ccd_fx, data.ccd_fy, data.ccd_angle],
                               atol=1e-6)
    scale = np.loadtxt(out / "ccdScale.dat", ndmin=2)
    np.testing.assert_allclose(scale[:, 1], data.ccd_scale, rtol=1e-7)
    np.testing.assert_allclose(scale[:, 2], -2.5 * np.log10(data.ccd_scale), atol=1e-6)
    coeffs = astro_ascii.read(out / "coeffs.dat", format="commented_header")
    assert coeffs.colnames == ["visit", "visit_scale[1]", "name", "index", "value"]
    assert len(coeffs) == data.visit_id.size * (20 + 3)
    phot = coeffs[(coeffs["visit"] == data.visit_id[2]) & (coeffs["name"] == "photometry")]
    np.testing.assert_allclose(phot["value"], data.coeffs[2]["photometry"], rtol=1e-9)
    t = astro_ascii.read(out / "dpos.dat", format="commented_header")
    assert t.colnames[:5] == ["visit", "ccd", "star", "x[pix]", "y[pix]"]
    assert (out / "dpos.dat").read_text().startswith("# visit ccd star x[pix]")


def test_catalog_fits_has_the_stars(good, written):
    data, _ = good
    out, _, _ = written
    with fits.open(out / "catalog.fits") as h:
        t = h["STARS"].data
        hdr = h["STARS"].header
        assert len(t) == data.star_ra.size
        np.testing.assert_allclose(t["ra"], data.star_ra)
        np.testing.assert_array_equal(t["nobs"], data.star_nobs)
        units = {hdr[f"TTYPE{i}"]: hdr.get(f"TUNIT{i}") for i in range(1, hdr["TFIELDS"] + 1)}
        assert units["ra"] == "deg" and units["dec"] == "deg" and units["mag_err"] == "mag"
        assert hdr["SOLVER"] == "jointcal" and hdr["TRACT"] == 9813
    assert data.star_nobs.sum() == int((~data.rejected).sum())


def test_index_references_every_file(good, written):
    data, _ = good
    out, files, _ = written
    text = (out / "index.html").read_text()
    for p in files:
        if p.name != "index.html":
            assert f'href="{p.name}"' in text, p.name
        if p.suffix == ".png":
            assert f'src="{p.name}"' in text, p.name
    assert "jointcal tract 9813 filter HSC-I" in text and "/tmp" not in text
    assert "chi2/ndof</td><td>1.0625" in text


def test_writer_is_fast(good, written):
    data, _ = good
    _, _, seconds = written
    # 4 visits x 3 + 5 global plots and the data files of ~8 k measurements: about 3 s of
    # CPU on a laptop core
    assert data.n_meas > 7000
    assert seconds < 10, seconds
