"""TPV output (config wcsFormat=tpv): hand-built polynomials and a fitted survey, read
back by astropy.wcs and compared with the mapping they must reproduce."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from tractpatch.jointcal.config import JointcalConfig
from tractpatch.jointcal.outputs import fit_tan_sip, fit_tpv, tpv_term_index, write_wcs
from tractpatch.jointcal.solver import fit_jointcal
from tractpatch.jointcal.synthetic import make_synthetic

NX, NY = 2048, 4176


def _wcs(header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # data-less header: "more axes than the image"
        return WCS(header)


def _dev_mas(ra, dec, ra2, dec2):
    dra = (ra - ra2 + 180.0) % 360.0 - 180.0
    return np.hypot(dra * np.cos(np.radians(dec)), dec - dec2) * 3.6e6


def _random_pixels(n, nx=NX, ny=NY, seed=5):
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, nx - 0.5, n), rng.uniform(-0.5, ny - 0.5, n)


def test_tpv_term_numbering():
    # TPV (Calabretta et al. draft; SCAMP): 0:1 1:x 2:y 3:r 4:x2 5:xy 6:y2 7:x3 8:x2y
    # 9:xy2 10:y3 11:r3 12:x4 ... 16:y4 17:x5 ... 22:y5 23:r5 24:x6 ... 30:y6 31:x7 ... 38
    assert list(tpv_term_index(3)) == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert list(tpv_term_index(7)[-8:]) == list(range(31, 39))
    assert len(tpv_term_index(7)) == 36 and 23 not in tpv_term_index(7)
    with pytest.raises(ValueError, match="order 7"):
        tpv_term_index(8)


def _hand_tpv():
    """A TPV header with order-5 terms in both axes (xi and eta distinct), HSC scale."""
    h = fits.Header()
    h.update({"CTYPE1": "RA---TPV", "CTYPE2": "DEC--TPV", "CRPIX1": NX / 2 + 0.5,
              "CRPIX2": NY / 2 + 0.5, "CRVAL1": 210.3, "CRVAL2": -1.2,
              "CD1_1": -4.66e-5, "CD1_2": 3.0e-8, "CD2_1": -2.0e-8, "CD2_2": 4.66e-5})
    pv = {(1, 1): 1.0, (2, 1): 1.0,
          (1, 4): 2e-3, (1, 5): -1.5e-3, (1, 6): 4e-4, (1, 7): 8e-3, (1, 9): -3e-3,
          (1, 10): 1e-3, (1, 13): 0.5, (1, 17): 3.0, (1, 20): -2.0,
          (2, 4): -1e-3, (2, 5): 6e-4, (2, 6): 2e-3, (2, 8): -4e-3, (2, 10): 9e-3,
          (2, 16): -0.7, (2, 18): 2.5, (2, 22): 1.5}
    for (axis, k), v in pv.items():
        h[f"PV{axis}_{k}"] = v
    return h, pv


def test_fit_tpv_recovers_a_hand_built_tpv():
    h, pv = _hand_tpv()
    w = _wcs(h)
    header, dev = fit_tpv(lambda x, y: w.all_pix2world(x, y, 0), NX, NY,
                          tolerance_mas=0.01)
    assert header["CTYPE1"] == "RA---TPV" and header["CTYPE2"] == "DEC--TPV"
    assert dev < 1e-3
    # order 5 reproduces it: the search stops there (no order-6 terms written)
    assert "PV1_22" in header and "PV1_24" not in header and "PV1_23" not in header
    for k in ("CRVAL1", "CRVAL2", "CD1_1", "CD1_2", "CD2_1", "CD2_2"):
        assert header[k] == pytest.approx(h[k], rel=1e-7, abs=1e-12), k
    for axis in (1, 2):
        for k in tpv_term_index(5):
            truth = pv.get((axis, k), 0.0)
            # scale of a term: its coefficient times (CCD half-size in degrees)^order
            assert header[f"PV{axis}_{k}"] == pytest.approx(truth, abs=1e-6 + 1e-6 * abs(truth)), \
                (axis, k)
    # independent check on random pixels, and the (iterative) inverse
    back = _wcs(header)
    x, y = _random_pixels(3000)
    ra, dec = back.all_pix2world(x, y, 0)
    tra, tdec = w.all_pix2world(x, y, 0)
    assert _dev_mas(ra, dec, tra, tdec).max() < 1e-3
    px, py = back.all_world2pix(tra, tdec, 0, tolerance=1e-9)
    assert np.hypot(px - x, py - y).max() < 1e-4


def test_fit_tpv_reproduces_a_sip_distortion():
    h = fits.Header()
    h.update({"CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP", "CRPIX1": 1024.5,
              "CRPIX2": 2088.5, "CRVAL1": 150.1, "CRVAL2": 2.3, "CD1_1": -4.6e-5,
              "CD1_2": 1.0e-7, "CD2_1": 2.0e-7, "CD2_2": 4.6e-5, "A_ORDER": 4,
              "B_ORDER": 4, "A_2_0": 2e-6, "A_1_1": -1e-6, "A_0_2": 3e-7, "A_3_0": 1e-9,
              "A_1_2": -2e-10, "A_4_0": 3e-14, "B_2_0": 5e-7, "B_0_2": -1e-6,
              "B_2_1": 4e-10, "B_0_3": 1e-9, "B_1_3": -2e-14})
    w = _wcs(h)
    header, dev = fit_tpv(lambda x, y: w.all_pix2world(x, y, 0), NX, NY)
    assert dev < 1.0
    x, y = _random_pixels(3000, seed=8)
    ra, dec = _wcs(header).all_pix2world(x, y, 0)
    assert _dev_mas(ra, dec, *w.all_pix2world(x, y, 0)).max() < 1.0


@pytest.fixture(scope="module")
def fitted():
    det, images, ref, truth = make_synthetic(n_visits=4, ccd_grid=(3, 2), stars_per_ccd=200,
                                             seed=11)
    return fit_jointcal(det, images, ref, JointcalConfig())


def test_tpv_files_reproduce_the_fitted_model(fitted, tmp_path):
    """A simulated survey's fit: every CCD's TPV file, as astropy reads it, is within
    1 mas of the fitted mapping everywhere (random pixels, not the fit grid), and the
    TPV and TAN-SIP files of a CCD agree."""
    res = fitted
    worst = 0.0
    for g, im in enumerate(res.images):
        model = (lambda x, y, g=g: res.pixel_to_sky(g, x, y))
        path = tmp_path / f"tpv-{g}.fits"
        dev = write_wcs(path, model, im.nx, im.ny, {"TASK": "jointcal"}, wcs_format="tpv")
        with fits.open(path, checksum=True) as hdul:
            hdul.verify("exception")
            h = hdul[0].header
        assert h["CTYPE1"] == "RA---TPV" and h["JCWCSRES"] == pytest.approx(dev)
        assert not any(k.startswith(("A_", "B_", "AP_", "BP_")) for k in h)
        x, y = _random_pixels(1500, im.nx, im.ny, seed=g)
        ra, dec = _wcs(h).all_pix2world(x, y, 0)
        d = _dev_mas(ra, dec, *model(x, y))
        assert d.max() < 1.0, (g, d.max())
        worst = max(worst, d.max())
        if g % 7 == 0:
            sip, _ = fit_tan_sip(model, im.nx, im.ny)
            ra2, dec2 = _wcs(sip).all_pix2world(x, y, 0)
            assert _dev_mas(ra, dec, ra2, dec2).max() < 2.0
    assert worst > 0  # a real comparison, not identical numbers


def test_unknown_wcs_format_is_refused(fitted, tmp_path):
    im = fitted.images[0]
    with pytest.raises(ValueError, match="wcsFormat"):
        write_wcs(tmp_path / "x.fits", lambda x, y: fitted.pixel_to_sky(0, x, y), im.nx,
                  im.ny, wcs_format="zpn")
    with pytest.raises(Exception, match="wcsFormat"):
        JointcalConfig(wcsFormat="zpn")
