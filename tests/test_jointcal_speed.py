"""The fast paths of jointcal against known answers: direct SRC column reading, the
sparse-formed Schur step, the vectorised TAN-SIP fit and its hand-written cards, BLAS
thread limiting."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

import tractpatch.jointcal.fitter as fitter
from tractpatch.errors import UserError
from tractpatch.jointcal.fitter import Rows, solve_step
from tractpatch.jointcal.inputs import _read_columns, read_src
from tractpatch.jointcal.outputs import _card, _real, fit_tan_sip, write_wcs
from tractpatch.jointcal.threads import single_blas_thread


def _table_file(path, columns, header=None):
    hdu = fits.BinTableHDU.from_columns(columns, name="SOURCES")
    if header:
        hdu.header.update(header)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return path


def test_read_columns_equals_astropy_for_every_fixed_type(tmp_path):
    n = 7
    rng = np.random.default_rng(0)
    cols = [fits.Column("k", "K", array=np.arange(n) * 10 ** 12),
            fits.Column("d", "D", array=rng.normal(size=n)),
            fits.Column("e", "E", array=rng.normal(size=n).astype(np.float32)),
            fits.Column("j", "J", array=np.arange(n, dtype=np.int32) - 3),
            fits.Column("i", "I", array=np.arange(n, dtype=np.int16)),
            fits.Column("b", "B", array=np.arange(n, dtype=np.uint8)),
            fits.Column("l", "L", array=np.arange(n) % 3 == 0),
            fits.Column("s", "8A", array=[f"s{i}" for i in range(n)]),
            fits.Column("v", "2D", array=rng.normal(size=(n, 2)))]
    path = _table_file(tmp_path / "t.fits", cols)
    names = ("k", "d", "e", "j", "i", "b", "l", "s", "v", "absent")
    with fits.open(path) as hdul:
        got = _read_columns(path, hdul, 1, names)
        ref = hdul[1].data
        assert set(got) == set(names) - {"absent"}
        for c in got:
            assert np.array_equal(got[c], ref[c]), c
            assert got[c].dtype.isnative or got[c].dtype.kind == "S", c
    assert got["l"].tolist() == [True, False, False, True, False, False, True]


def test_read_columns_falls_back_to_astropy_for_scaled_columns(tmp_path):
    # TZERO: unsigned 16-bit integers stored as signed (astropy applies the offset)
    cols = [fits.Column("u", "I", bzero=32768, array=np.array([0, 1, 65535], np.uint16)),
            fits.Column("x", "D", array=[1.0, 2.0, 3.0])]
    path = _table_file(tmp_path / "t.fits", cols)
    with fits.open(path) as hdul:
        got = _read_columns(path, hdul, 1, ("u", "x"))
    assert got["u"].tolist() == [0, 1, 65535]
    assert got["x"].tolist() == [1.0, 2.0, 3.0]


def _src(path, **over):
    t = Table({"x": [10.0, 20.0, 30.0, 40.0, 50.0, np.nan],
               "y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
               "x_err": [0.1] * 6, "y_err": [0.1] * 6,
               "flux_psf": [1000.0, 1000.0, 50.0, 1000.0, 1000.0, 1000.0],
               "flux_psf_err": [10.0] * 6,       # S/N 100, 100, 5 (cut), 100, 100, 100
               "flags": np.array([0, 4, 0, 0, 16, 0], np.int32),  # bit 4 (bad) cuts row 2
               "is_star": [True, True, True, False, True, True]})  # row 4: galaxy
    for k, v in over.items():
        t[k] = v
    hdu = fits.table_to_hdu(t)
    hdu.name = "SOURCES"
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [1024.5, 2088.5]
    w.wcs.cd = np.array([[-0.168, 0.0], [0.0, 0.168]]) / 3600
    hdu.header.update(w.to_header())
    hdu.header.update({"VISIT": 12, "CCD": 3, "NX": 2048, "NY": 4176, "MJD-OBS": 58800.5,
                       "FILTER": "HSC-R"})
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return path


def test_read_src_selects_by_hand(tmp_path):
    det, im = read_src(_src(tmp_path / "SRC.fits"), min_snr=10.0)
    # kept: row 0; row 1 flag 4 (bad), row 2 S/N 5, row 3 galaxy, row 4 flag 16 (not
    # in BAD_FLAGS) kept, row 5 NaN x
    assert det.x.tolist() == [10.0, 50.0]
    assert det.flux.tolist() == [1000.0, 1000.0]
    assert det.visit.tolist() == [12, 12] and det.ccd.tolist() == [3, 3]
    assert (im.visit, im.ccd, im.nx, im.ny, im.mjd, im.filter) == \
        (12, 3, 2048, 4176, 58800.5, "HSC-R")
    ra, dec = im.wcs.all_pix2world([1023.5], [2087.5], 0)
    assert ra[0] == pytest.approx(150.0) and dec[0] == pytest.approx(2.0)


def test_read_src_missing_column_is_one_line_user_error(tmp_path):
    path = tmp_path / "SRC.fits"
    t = Table({"x": [1.0], "y": [1.0]})
    hdu = fits.table_to_hdu(t)
    hdu.header.update({"VISIT": 1, "CCD": 0, "NX": 10, "NY": 10})
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    with pytest.raises(UserError, match=r"SRC\.fits: SRC catalog lacks x_err.*rerun "
                                        "detectSources.py"):
        read_src(path)


def _random_rows(rng, n_rows=400, n_par=12, n_star=60, m=4):
    idx = np.stack([rng.choice(n_par, m, replace=False) for _ in range(n_rows)])
    idx[rng.random((n_rows, m)) < 0.2] = -1
    val = rng.normal(size=(n_rows, m))
    star = rng.integers(0, n_star, n_rows)
    star[rng.random(n_rows) < 0.1] = -1   # rows without a star (reference terms)
    return Rows(idx, val, star, rng.normal(size=n_rows), rng.normal(size=n_rows))


def test_schur_step_equals_full_least_squares(monkeypatch):
    """Both formations of the reduced system give the step minimising |r + J d|^2."""
    rng = np.random.default_rng(4)
    rows = _random_rows(rng)
    n_par, n_star = 12, 60
    J = np.zeros((len(rows.r), n_par + n_star))
    for i in range(len(rows.r)):
        for a, v in zip(rows.idx[i], rows.val[i]):
            if a >= 0:
                J[i, a] += v
        if rows.star[i] >= 0:
            J[i, n_par + rows.star[i]] = rows.star_val[i]
    used = np.abs(J).sum(axis=0) > 0
    expect = np.zeros(n_par + n_star)
    expect[used] = np.linalg.lstsq(J[:, used], -rows.r, rcond=None)[0]
    free_map = np.arange(n_par)
    for limit in (10 ** 9, 0):  # scipy.sparse formation, then the numba kernels
        monkeypatch.setattr(fitter, "SPARSE_FORMATION_ROWS", limit)
        dt, ds = solve_step(rows, free_map, n_par, n_star)
        np.testing.assert_allclose(dt, expect[:n_par], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ds, expect[n_par:], rtol=1e-9, atol=1e-12)


def _sip_truth():
    """A TAN-SIP of order 3 with HSC-like scale and distortion, as astropy evaluates it."""
    h = fits.Header()
    h.update({"CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP", "CRPIX1": 1024.5,
              "CRPIX2": 2088.5, "CRVAL1": 150.1, "CRVAL2": 2.3, "CD1_1": -4.6e-5,
              "CD1_2": 1.0e-7, "CD2_1": 2.0e-7, "CD2_2": 4.6e-5, "A_ORDER": 3,
              "B_ORDER": 3, "A_2_0": 2e-6, "A_1_1": -1e-6, "A_0_2": 3e-7, "A_3_0": 1e-9,
              "A_1_2": -2e-10, "B_2_0": 5e-7, "B_0_2": -1e-6, "B_2_1": 4e-10,
              "B_0_3": 1e-9})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return h, WCS(h)


def test_fit_tan_sip_recovers_a_known_sip():
    h, w = _sip_truth()
    header, dev = fit_tan_sip(lambda x, y: w.all_pix2world(x, y, 0), 2048, 4176,
                              tolerance_mas=0.01)
    # order 3 reproduces it exactly: the fit stops there, at rounding-level deviation
    assert header["A_ORDER"] == 3 and dev < 1e-3
    for k in ("CRVAL1", "CRVAL2", "CD1_1", "CD1_2", "CD2_1", "CD2_2", "A_2_0", "A_1_1",
              "A_0_2", "A_3_0", "A_1_2", "B_2_0", "B_0_2", "B_2_1", "B_0_3"):
        assert header[k] == pytest.approx(h[k], rel=1e-6, abs=1e-15), k
    # the inverse polynomial brings sky positions back to the pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = WCS(header)
    x, y = np.meshgrid(np.linspace(0, 2047, 9), np.linspace(0, 4175, 9))
    ra, dec = w.all_pix2world(x.ravel(), y.ravel(), 0)
    back = np.array(fitted.all_world2pix(ra, dec, 0, tolerance=1e-8))
    np.testing.assert_allclose(back, [x.ravel(), y.ravel()], atol=1e-4)


def test_written_wcs_file_is_valid_and_exact(tmp_path):
    _, w = _sip_truth()
    path = tmp_path / "wcs.fits"
    dev = write_wcs(path, lambda x, y: w.all_pix2world(x, y, 0), 2048, 4176,
                    {"TASK": "jointcal", "CFGHASH": "0123abcd"})
    with fits.open(path, checksum=True) as hdul:
        hdul.verify("exception")
        h = hdul[0].header
    assert list(h)[:5] == ["SIMPLE", "BITPIX", "NAXIS", "EXTEND", "WCSAXES"]
    assert h["TASK"] == "jointcal" and h["CFGHASH"] == "0123abcd"
    assert h["JCWCSRES"] == pytest.approx(dev) and dev < 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = WCS(h)
    x, y = np.random.default_rng(2).uniform(0, 2047, (2, 200))
    a = np.array(back.all_pix2world(x, y, 0))
    b = np.array(w.all_pix2world(x, y, 0))
    assert np.abs(a - b).max() * 3.6e6 < dev + 1e-3


@pytest.mark.parametrize("v", [0.0, 1.0, -1.0, 1e-300, -1.2345678901234567e-05,
                               123456789.123456789, 2.0 ** -40, -9.87654321e+100])
def test_real_cards_round_trip(v):
    text = _real(v)
    assert len(text) <= 20 and ("." in text or "E" in text)
    # 14 significant digits at least (what astropy keeps of a long float too)
    assert float(text) == pytest.approx(v, rel=5e-14, abs=0)
    card = fits.Card.fromstring(_card("A_1_2", v, "a comment"))
    assert card.keyword == "A_1_2" and card.value == pytest.approx(v, rel=5e-14)
    assert card.comment == "a comment"


def test_real_cards_refuse_non_finite():
    with pytest.raises(ValueError, match="non-finite"):
        _real(float("nan"))


def test_single_blas_thread_limits_and_restores():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # without threadpoolctl the context changes nothing
        with single_blas_thread():
            pass
        return
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    before = [i["num_threads"] for i in blas]
    with single_blas_thread():
        inside = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        assert inside and all(n == 1 for n in inside)
    after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert after == before


# ------------------------------------------------------------- Cholesky backends
import scipy.sparse as sp  # noqa: E402

import tractpatch.jointcal.cholesky as cholesky  # noqa: E402

#: the backends testable here: scipy always; cholmod where scikit-sparse is installed
BACKENDS = ["scipy"] + (["cholmod"] if cholesky.cholmod_available() else [])


def _spd(n=300, seed=0):
    """A sparse SPD matrix with a known solution: banded blocks plus a few long links,
    entries of very different scales (as model parameters of different units)."""
    rng = np.random.default_rng(seed)
    J = sp.random(4 * n, n, density=8 / n, random_state=seed, format="csr")
    scale = sp.diags(10.0 ** rng.uniform(-3, 3, n))
    H = (scale @ (J.T @ J + sp.eye(n)) @ scale).tocsc()
    x = rng.normal(size=n)
    return H, x, H @ x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dense", [False, True])
def test_cholesky_backends_solve_a_known_system(backend, dense):
    H, x, b = _spd()
    got = cholesky.solve(H.toarray() if dense else H, b, backend=backend)
    np.testing.assert_allclose(got, x, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cholesky_singular_raises_the_callers_error(backend):
    H, _, b = _spd(50)
    H = H.tolil()
    H[7, :] = 0
    H[:, 7] = 0
    with pytest.raises(fitter.SingularSystemError, match="singular normal matrix"):
        cholesky.factor(H.tocsc(), backend=backend, error=fitter.SingularSystemError)
    # not positive definite although the diagonal is
    bad = sp.csc_matrix(np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(cholesky.NotPositiveDefinite):
        cholesky.factor(bad, backend=backend).solve(np.ones(2)) if backend == "cholmod" \
            else _indefinite_dense(backend)


def _indefinite_dense(backend):
    # SuperLU factors an indefinite matrix without complaint (it is an LU): the scipy
    # backend's Cholesky check is the dense LAPACK path
    cholesky.factor(np.array([[1.0, 2.0], [2.0, 1.0]]), backend=backend)


def test_cholesky_backend_choice(monkeypatch):
    assert cholesky.resolve_backend("scipy", sparse=True) == "scipy"
    assert cholesky.resolve_backend("auto", sparse=False) == "scipy"  # dense: LAPACK
    monkeypatch.setattr(cholesky, "cholmod_available", lambda: False)
    assert cholesky.resolve_backend("auto", sparse=True) == "scipy"
    with pytest.raises(ValueError, match="scikit-sparse is not installed"):
        cholesky.resolve_backend("cholmod", sparse=True)
    with pytest.raises(ValueError, match="unknown Cholesky backend"):
        cholesky.resolve_backend("mkl", sparse=True)
    monkeypatch.setattr(cholesky, "cholmod_available", lambda: True)
    assert cholesky.resolve_backend("auto", sparse=True) == "cholmod"
    with cholesky.use_backend("scipy"):
        assert cholesky.resolve_backend(None, sparse=True) == "scipy"
    assert cholesky.resolve_backend(None, sparse=True) == "cholmod"


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_step_with_each_backend_equals_least_squares(backend):
    """The fitter's sparse path (above denseLimit) through each backend gives the step
    minimising |r + J d|^2, as the dense path does."""
    rng = np.random.default_rng(4)
    rows = _random_rows(rng)
    n_par, n_star = 12, 60
    dense_dt, dense_ds = solve_step(rows, np.arange(n_par), n_par, n_star)
    with cholesky.use_backend(backend):
        dt, ds = solve_step(rows, np.arange(n_par), n_par, n_star, dense_limit=1)
    np.testing.assert_allclose(dt, dense_dt, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ds, dense_ds, rtol=1e-9, atol=1e-12)


def test_use_backend_refuses_cholmod_when_missing(monkeypatch):
    monkeypatch.setattr(cholesky, "cholmod_available", lambda: False)
    with pytest.raises(ValueError, match="scikit-sparse is not installed"):
        with cholesky.use_backend("cholmod"):
            pass
    with cholesky.use_backend("auto"):  # the fallback: SuperLU for sparse systems
        H, x, b = _spd(80)
        np.testing.assert_allclose(cholesky.solve(H, b), x, rtol=1e-8)
        assert cholesky.resolve_backend(None, sparse=True) == "scipy"


# ------------------------------------------------------ SRC headers read directly
import tractpatch.jointcal.inputs as inputs  # noqa: E402


def _both_paths(path, monkeypatch):
    fast = inputs.read_src(path)
    with monkeypatch.context() as m:
        m.setattr(inputs, "_read_src_direct", lambda p: None)
        slow = inputs.read_src(path)
    return fast, slow


def test_direct_src_reading_equals_astropy(tmp_path, monkeypatch):
    """A SIP WCS, a quoted string and a comment: the directly split header gives the
    same detections, CCD image and WCS as astropy's reading."""
    path = _src(tmp_path / "SRC.fits")
    with fits.open(path, mode="update") as hdul:
        h = hdul[1].header
        h["CTYPE1"], h["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
        h.update({"A_ORDER": 2, "B_ORDER": 2, "A_2_0": 1e-6, "B_0_2": -2e-6,
                  "OBJECT": ("it''s M17", "a quote"), "FILTER": ("HSC-R", "band")})
    assert inputs._read_src_direct(path) is not None
    (d1, im1), (d2, im2) = _both_paths(path, monkeypatch)
    for f in ("visit", "ccd", "x", "y", "x_err", "y_err", "flux", "flux_err"):
        np.testing.assert_array_equal(getattr(d1, f), getattr(d2, f))
    assert d1.x.tolist() == [10.0, 50.0]
    assert (im1.visit, im1.ccd, im1.nx, im1.ny, im1.mjd, im1.filter) == \
        (im2.visit, im2.ccd, im2.nx, im2.ny, im2.mjd, im2.filter) == \
        (12, 3, 2048, 4176, 58800.5, "HSC-R")
    x, y = np.array([0.0, 2047.0]), np.array([0.0, 4175.0])
    np.testing.assert_array_equal(im1.wcs.all_pix2world(x, y, 0),
                                  im2.wcs.all_pix2world(x, y, 0))
    # the SIP terms are applied: the corner is off the pure TAN position
    assert im1.wcs.sip is not None and im1.wcs.sip.a[2, 0] == 1e-6


def test_unusual_src_layouts_go_through_astropy(tmp_path):
    # SOURCES as the second extension, then a truncated file: astropy reads / refuses
    path = _src(tmp_path / "SRC.fits")
    with fits.open(path) as hdul:
        other = fits.ImageHDU(np.zeros((2, 2)), name="OTHER")
        fits.HDUList([hdul[0].copy(), other, hdul[1].copy()]).writeto(tmp_path / "b.fits")
    assert inputs._read_src_direct(tmp_path / "b.fits") is None
    det, im = inputs.read_src(tmp_path / "b.fits")
    assert det.x.tolist() == [10.0, 50.0] and im.visit == 12
    data = path.read_bytes()
    (tmp_path / "t.fits").write_bytes(data[:len(data) - 2880])
    with pytest.raises(UserError, match=r"t\.fits: not a readable SRC catalog"):
        inputs.read_src(tmp_path / "t.fits")
