"""Exposure and WCS round trips: our MEF, TAN, TAN-SIP, TPV, fpack, PS1 quirks."""
import glob

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from tractpatch.errors import UserError
from tractpatch.image import (Exposure, ExposureInfo, PhotoCalib, read_exposure, read_wcs,
                              write_exposure, wcs_to_header)
from tractpatch.image.fits_io import read_image_file, undo_asinh_scaling
from tractpatch.image.mask import MaskPlanes


def tan_wcs(ra=150.0, dec=2.0, scale=0.168 / 3600, rot_deg=10.0, crpix=(50, 60)):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = list(crpix)
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    w.wcs.cd = scale * np.array([[-c, s], [s, c]])
    w.wcs.radesys = "ICRS"
    return w


def sip_wcs():
    h = wcs_to_header(tan_wcs())
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    h["A_ORDER"] = h["B_ORDER"] = 2
    h["A_2_0"], h["A_0_2"], h["B_1_1"] = 2e-5, -1e-5, 3e-5
    return WCS(h)


def grid():
    x, y = np.meshgrid(np.linspace(0, 99, 7), np.linspace(0, 119, 7))
    return x.ravel(), y.ravel()


def assert_same_mapping(w1, w2, tol_deg=1e-10):
    x, y = grid()
    r1, d1 = w1.all_pix2world(x, y, 0)
    r2, d2 = w2.all_pix2world(x, y, 0)
    assert np.max(np.abs(r1 - r2)) < tol_deg and np.max(np.abs(d1 - d2)) < tol_deg


def make_exposure(wcs):
    rng = np.random.default_rng(3)
    img = rng.normal(100, 5, (120, 100)).astype(np.float32)
    mask = np.zeros(img.shape, np.int32)
    mp = MaskPlanes()
    mask[10, :] = mp.bitmask("BAD")
    mask[20:22, 30:33] = mp.bitmask("SAT", "DETECTED")
    var = np.full(img.shape, 25.0, np.float32)
    pc = PhotoCalib(np.array([[2.0, 0.1], [0.05, 0.0]]), (0, 0, 100, 120), 0.01)
    info = ExposureInfo(visit=1234, ccd=42, ccdname="1_53", filter="HSC-I", field="SSP",
                        pointing=817, instrument="hsc", exptime=270.0, mjd=57000.5,
                        date_obs="2014-12-09", gain=3.0, saturation=60000.0, psf_fwhm=0.7)
    return Exposure(img, mask, var, wcs, pc, info, mp)


@pytest.mark.parametrize("make_wcs", [tan_wcs, sip_wcs])
def test_mef_round_trip(tmp_path, make_wcs):
    exp = make_exposure(make_wcs())
    p = tmp_path / "calexp.fits"
    write_exposure(p, exp, extra_header={"TASK": "test"})
    back = read_exposure(p)
    np.testing.assert_array_equal(back.image, exp.image)
    np.testing.assert_array_equal(back.mask, exp.mask)
    np.testing.assert_array_equal(back.variance, exp.variance)
    assert back.mask_planes.planes == exp.mask_planes.planes
    assert back.info.visit == 1234 and back.info.ccd == 42 and back.info.filter == "HSC-I"
    assert back.info.exptime == 270.0 and back.info.mjd == 57000.5
    assert_same_mapping(back.wcs, exp.wcs)
    np.testing.assert_allclose(back.photo_calib.evaluate(33.0, 77.0),
                               exp.photo_calib.evaluate(33.0, 77.0))
    with fits.open(p) as h:
        img_h = h["IMAGE"].header
        assert "CD1_1" in img_h and "PC1_1" not in img_h
        assert img_h["RADESYS"] == "ICRS" and img_h["EQUINOX"] == 2000.0
        assert h[0].header["TIMESYS"] == "UTC"  # a time is written, so TIMESYS is too
        assert h["MASK"].header["MP_SAT"] == 1
        assert h[0].header["TASK"] == "test"
    if make_wcs is sip_wcs:
        assert back.wcs.sip is not None


def test_tpv_round_trip_real_decam(tmp_path, shared_data):
    f = sorted(glob.glob(str(shared_data / "legacysurvey-decam-cutouts/testcase3/images/"
                             "**/*_ooi_*"), recursive=True))[0]
    hdr = fits.getheader(f, 1)
    assert hdr["CTYPE1"] == "RA---TPV"
    w = read_wcs(hdr)
    out = wcs_to_header(w)
    assert out["CTYPE1"] == "RA---TPV" and "PV1_7" in out and "CD1_1" in out
    w2 = WCS(out)
    assert_same_mapping(w, w2)
    # the TPV terms matter: dropping them moves positions by more than 1"
    h2 = out.copy()
    for k in [k for k in h2 if k.startswith("PV")]:
        del h2[k]
    h2["CTYPE1"], h2["CTYPE2"] = "RA---TAN", "DEC--TAN"
    plain = WCS(h2)
    r1, d1 = w.all_pix2world([20.0], [25.0], 0)
    r2, d2 = plain.all_pix2world([20.0], [25.0], 0)
    assert np.hypot((r1 - r2) * np.cos(np.radians(d1)), d1 - d2)[0] * 3600 > 1.0


def test_single_image_and_mef_extension_and_fpack(tmp_path):
    exp = make_exposure(tan_wcs())
    h = wcs_to_header(exp.wcs)
    h["EXPTIME"] = 30.0
    single = tmp_path / "single.fits"
    fits.PrimaryHDU(exp.image, h).writeto(single)
    got = read_exposure(single)
    np.testing.assert_array_equal(got.image, exp.image)
    assert_same_mapping(got.wcs, exp.wcs)
    # variance estimated from the robust scatter when no weight file is given
    assert abs(np.sqrt(got.variance[0, 0]) - 5.0) < 0.3

    mef = tmp_path / "mef.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(exp.image * 0, h, name="CCD1"),
                  fits.ImageHDU(exp.image, h, name="CCD2")]).writeto(mef)
    got2 = read_exposure(mef, hdu="CCD2")
    np.testing.assert_array_equal(got2.image, exp.image)

    fz = tmp_path / "img.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(exp.image, h, quantize_level=0.0,
                                                       compression_type="GZIP_2")]).writeto(fz)
    got3 = read_exposure(fz)
    np.testing.assert_array_equal(got3.image, exp.image)
    assert_same_mapping(got3.wcs, exp.wcs)


def test_weight_and_mask_companions(tmp_path):
    exp = make_exposure(tan_wcs())
    h = wcs_to_header(exp.wcs)
    img = tmp_path / "a.fits"
    fits.PrimaryHDU(exp.image, h).writeto(img)
    w = np.full(exp.shape, 1 / 16.0, np.float32)
    w[5, 5] = 0
    fits.PrimaryHDU(w).writeto(tmp_path / "a.weight.fits")
    m = np.zeros(exp.shape, np.int16)
    m[7, 7] = 3   # DECam CP code 3 = saturated
    m[8, 8] = 1   # bad
    fits.PrimaryHDU(m).writeto(tmp_path / "a.mask.fits")
    got = read_image_file(img, weight=(tmp_path / "a.weight.fits", None),
                          mask=(tmp_path / "a.mask.fits", None),
                          mask_codes={"kind": "values", "map": {1: "BAD", 3: "SAT"}})
    assert got.variance[0, 0] == 16.0
    assert got.mask[5, 5] & got.mask_planes.bitmask("NO_DATA")
    assert got.mask[7, 7] == got.mask_planes.bitmask("SAT")
    assert got.mask[8, 8] == got.mask_planes.bitmask("BAD")


def test_ps1_quirks(tmp_path):
    w = tan_wcs()
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = 150.0, 2.0
    h["CRPIX1"], h["CRPIX2"] = 50.0, 60.0
    h["CDELT1"], h["CDELT2"] = -0.25 / 3600, 0.25 / 3600
    h["PC001001"], h["PC001002"], h["PC002001"], h["PC002002"] = 1.0, 0.0, 0.0, 1.0
    h["EQUINOX"] = 1950.0  # would mean FK4 B1950 by the FITS defaults
    h["MJD-OBS"] = 55555.5
    h["BSOFTEN"], h["BOFFSET"] = 2.0, 10.0
    v = np.array([[0.0, 1.0857362], [-1.0857362, 2.0]], np.float32)
    p = tmp_path / "ps1.fits"
    fits.PrimaryHDU(v, h).writeto(p)
    got = read_image_file(p, quirks=("ps1",))
    assert got.wcs.wcs.radesys == "FK5" and got.wcs.wcs.equinox == 2000.0
    np.testing.assert_allclose(got.wcs.wcs.get_pc(), np.eye(2))
    # flux = boffset + bsoften * 2 sinh(v / 1.0857362)
    np.testing.assert_allclose(got.image[0, 1], 10 + 2 * 2 * np.sinh(1.0), rtol=1e-6)
    np.testing.assert_allclose(got.image[0, 0], 10.0)
    from tractpatch.image.wcs_io import fix_header_quirks

    assert fix_header_quirks(h, ("ps1",))["TIMESYS"] == "TAI"
    np.testing.assert_allclose(undo_asinh_scaling(np.array([0.0]), h), [10.0])


def test_photocalib_file_round_trip(tmp_path):
    pc = PhotoCalib(np.array([[3.0, 0.2, 0.01], [0.1, 0.02, 0.0]]), (0, 0, 2048, 4176), 0.003)
    pc.write(tmp_path / "pc.fits")
    back = PhotoCalib.read(tmp_path / "pc.fits")
    x, y = grid()
    np.testing.assert_allclose(back.evaluate(x * 20, y * 30), pc.evaluate(x * 20, y * 30))
    img = pc.evaluate_image((50, 40))
    np.testing.assert_allclose(img[7, 11], pc.evaluate(11, 7))
    assert fits.getheader(tmp_path / "pc.fits")["FLUXMAG0"] == pytest.approx(3631e9 / pc.mean)
    zp = PhotoCalib.from_zero_point(27.0)
    assert zp.zero_point == pytest.approx(27.0)
    assert zp.mean == pytest.approx(3631e9 * 10 ** (-0.4 * 27))  # 57.54 nJy per count


@pytest.mark.parametrize("content, fragment", [
    (b"not a fits file at all" * 200, "not a readable FITS"),
])
def test_bad_files_one_line(tmp_path, content, fragment):
    p = tmp_path / "bad.fits"
    p.write_bytes(content)
    with pytest.raises(UserError) as exc:
        read_exposure(p)
    assert fragment in str(exc.value) and str(p) in str(exc.value)


def test_truncated_and_no_wcs_and_all_nan(tmp_path):
    exp = make_exposure(tan_wcs())
    good = tmp_path / "g.fits"
    fits.PrimaryHDU(exp.image, wcs_to_header(exp.wcs)).writeto(good)
    trunc = tmp_path / "t.fits"
    trunc.write_bytes(good.read_bytes()[:10000])
    with pytest.raises(UserError, match="truncated|not a readable"):
        read_exposure(trunc)
    nowcs = tmp_path / "n.fits"
    fits.PrimaryHDU(exp.image).writeto(nowcs)
    with pytest.raises(UserError, match="no celestial WCS"):
        read_exposure(nowcs)
    nan = tmp_path / "nan.fits"
    fits.PrimaryHDU(np.full((10, 10), np.nan, np.float32), wcs_to_header(exp.wcs)).writeto(nan)
    with pytest.raises(UserError, match="NaN"):
        read_exposure(nan)
