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


# ---- direct reads of plain image HDUs (tractpatch.image.fits_read) ----------------------

from tractpatch.image import fits_io, fits_read  # noqa: E402
from tractpatch.image.fits_io import estimate_noise, read_plane  # noqa: E402


def special_values(dtype, shape=(37, 53)):
    """Random pixels of ``dtype`` plus the values a byte swap could get wrong."""
    rng = np.random.default_rng(11)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        a = rng.normal(0, 1e3, shape).astype(dt)
        flat = a.reshape(-1)
        info = np.finfo(dt)
        flat[:8] = [np.nan, np.inf, -np.inf, -0.0, info.tiny, info.max, -info.max,
                    info.smallest_subnormal]
        # a NaN with a payload: must come through bit for bit
        flat[8:9].view(f"u{dt.itemsize}")[0] = (flat[0:1].view(f"u{dt.itemsize}")[0] | 5)
    else:
        info = np.iinfo(dt)
        a = rng.integers(info.min, info.max, shape, endpoint=True, dtype=dt)
        a.reshape(-1)[:3] = [info.min, info.max, 0]
    return a


def as_bytes(a):
    return np.ascontiguousarray(a).astype(a.dtype.newbyteorder("="), copy=False).tobytes()


@pytest.mark.parametrize("chunk", [fits_read.CHUNK_BYTES, 1000, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int32, np.uint8])
def test_direct_read_bit_identical_to_astropy(tmp_path, monkeypatch, dtype, chunk):
    # small chunks: the buffer loop, its remainder and an odd chunk size are exercised
    monkeypatch.setattr(fits_read, "CHUNK_BYTES", chunk)
    prim, ext = special_values(dtype), special_values(dtype, (5, 7))[::-1]
    p = tmp_path / "planes.fits"
    fits.HDUList([fits.PrimaryHDU(prim), fits.ImageHDU(np.zeros((3, 3), np.float32)),
                  fits.ImageHDU(ext, name="SCI")]).writeto(p)
    before = p.read_bytes()
    with fits.open(p, memmap=False) as hdul:
        for idx, want in ((0, prim), (2, ext)):
            got = fits_read.read_plain_image(hdul[idx], p, hdul[idx].name)
            ref = hdul[idx].data
            assert got is not None and got.shape == ref.shape == want.shape
            assert got.dtype == ref.dtype.newbyteorder("=") == np.dtype(dtype)
            assert got.dtype.isnative and got.flags.owndata and got.flags.writeable
            assert got.flags.c_contiguous
            assert got.tobytes() == as_bytes(ref) == as_bytes(want)
    plane, header = read_plane(p, "SCI")
    assert plane.tobytes() == as_bytes(ext) and header["EXTNAME"] == "SCI"
    assert p.read_bytes() == before  # read-only


def test_mef_read_direct_and_bit_identical(tmp_path, monkeypatch):
    exp = make_exposure(tan_wcs())
    exp.image[3, 4] = np.nan
    exp.image[5, 6] = -0.0
    exp.mask[7, 8] = np.int32(-2**31)  # bit 31: the sign bit of the int32 plane
    exp.variance[9, 9] = np.inf
    p = tmp_path / "calexp.fits"
    write_exposure(p, exp)
    calls = []

    def spy(hdu, path, name):
        out = fits_read.read_plain_image(hdu, path, name)
        calls.append((name, out is not None))
        return out

    monkeypatch.setattr(fits_io, "read_plain_image", spy)
    back = read_exposure(p)
    assert calls == [("IMAGE", True), ("MASK", True), ("VARIANCE", True),
                     ("PHOTOCALIB", True)]
    with fits.open(p) as h:
        for plane, dtype in (("image", np.float32), ("mask", np.int32),
                             ("variance", np.float32)):
            arr = getattr(back, plane)
            assert arr.dtype == dtype and arr.flags.owndata and arr.flags.writeable
            assert arr.tobytes() == as_bytes(h[plane.upper()].data)
    assert back.mask[7, 8] == -2**31 and np.signbit(back.image[5, 6])
    assert back.mask_planes.planes == exp.mask_planes.planes


def test_scaled_blank_and_compressed_images_go_through_astropy(tmp_path):
    raw = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    cases = {}
    scaled = fits.PrimaryHDU(raw.copy())
    scaled.header["BSCALE"], scaled.header["BZERO"] = 0.5, 100.0
    cases["scaled"] = (fits.HDUList([scaled]), 100.0 + 0.5 * raw)
    unsigned = fits.PrimaryHDU(raw.copy())
    unsigned.header["BZERO"] = 32768  # uint16 by the FITS convention
    cases["unsigned"] = (fits.HDUList([unsigned]), raw.astype(np.int64) + 32768)
    blank = fits.PrimaryHDU(raw.copy())
    blank.header["BLANK"] = -6  # astropy returns float with NaN for it
    cases["blank"] = (fits.HDUList([blank]), np.where(raw == -6, np.nan, raw))
    img = special_values(np.float32, (40, 30))
    img[~np.isfinite(img)] = 1.0
    cases["fpack"] = (fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(
        img, quantize_level=0.0, compression_type="GZIP_2")]), img)
    for name, (hdul, want) in cases.items():
        p = tmp_path / f"{name}.fits"
        hdul.writeto(p)
        with fits.open(p, memmap=False) as h:
            idx = 1 if name == "fpack" else 0
            assert fits_read.read_plain_image(h[idx], p, name) is None, name
            ref = np.array(h[idx].data)
        np.testing.assert_array_equal(ref, want)  # astropy applied the scaling
        plane, _ = read_plane(p)
        assert plane.dtype == ref.dtype and as_bytes(plane) == as_bytes(ref), name
    # a gzip'ed file: astropy's offsets are into the decompressed stream
    import gzip

    p = tmp_path / "img.fits"
    fits.PrimaryHDU(img).writeto(p)
    gz = tmp_path / "img.fits.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    with fits.open(gz, memmap=False) as h:
        assert fits_read.read_plain_image(h[0], gz, "PRIMARY") is None
    assert as_bytes(read_plane(gz)[0]) == img.tobytes()


def test_foreign_image_float32_path_same_as_float64(tmp_path):
    """Foreign float32 images stay float32 and give what the float64 pipeline gave."""
    rng = np.random.default_rng(5)
    img = rng.normal(10.0, 3.0, (120, 100)).astype(np.float32)
    img[4, 5], img[6, 7] = np.nan, np.inf
    p = tmp_path / "im.fits"
    fits.PrimaryHDU(img, wcs_to_header(tan_wcs())).writeto(p)
    var = np.full(img.shape, 4.0, np.float32)
    var[1, 2] = np.nan
    fits.PrimaryHDU(var).writeto(tmp_path / "im.var.fits")
    got = read_image_file(p)
    # the float64 pipeline by hand: 1.4826 MAD of the finite pixels, in float64
    d = img.astype(np.float64)
    d = d[np.isfinite(d)]
    mad = np.median(np.abs(d - np.median(d)))
    assert estimate_noise(img) == estimate_noise(img.astype(np.float64)) == 1.4826 * mad
    assert got.variance.dtype == np.float32
    assert np.all(got.variance == np.float32((1.4826 * mad) ** 2))
    want = np.where(np.isfinite(img), img, np.float32(0.0))
    assert got.image.dtype == np.float32 and got.image.tobytes() == want.tobytes()
    nodata = got.mask_planes.bitmask("NO_DATA")
    assert np.array_equal(got.mask != 0, ~np.isfinite(img)) and got.mask[4, 5] == nodata
    got2 = read_image_file(p, variance=(tmp_path / "im.var.fits", None))
    assert got2.variance[1, 2] == np.inf and got2.variance[0, 0] == 4.0
    # weights: variance 1 / w where w > 0, else infinite and NO_DATA
    w = np.full(img.shape, 0.25, np.float32)
    w[0, :5] = [0.0, -1.0, np.nan, np.inf, 1e-45]  # 1 / subnormal overflows to inf
    fits.PrimaryHDU(w).writeto(tmp_path / "im.w.fits")
    got3 = read_image_file(p, weight=(tmp_path / "im.w.fits", None))
    assert got3.variance.dtype == np.float32 and got3.variance[5, 5] == 4.0
    assert list(got3.variance[0, :5]) == [np.inf, np.inf, np.inf, 0.0, np.inf]
    assert [got3.mask[0, i] == nodata for i in range(5)] == [True, True, True, False, False]
    fits.PrimaryHDU(np.full(img.shape, 3, np.int16)).writeto(tmp_path / "im.wi.fits")
    got4 = read_image_file(p, weight=(tmp_path / "im.wi.fits", None))
    assert np.all(got4.variance == np.float32(1 / 3))  # 1.0 / 3 in float64, then float32
    # integer images still go through float64 (exact for int16)
    fits.PrimaryHDU(np.full((20, 20), -300, np.int16), wcs_to_header(tan_wcs())).writeto(
        tmp_path / "i16.fits")
    assert np.all(read_image_file(tmp_path / "i16.fits").image == -300.0)


@pytest.mark.parametrize("where, hdu", [
    ("image data", "[IMAGE]"), ("mask data", "[MASK]"), ("variance data", "[VARIANCE]"),
    ("last pixels", "[VARIANCE]"), ("photocalib data", "[PHOTOCALIB]"),
    ("mask header", "[2]"), ("data start", "[IMAGE]")])
def test_truncated_mef_one_line(tmp_path, where, hdu):
    exp = make_exposure(tan_wcs())
    if where == "last pixels":
        exp.photo_calib = None  # VARIANCE is the last HDU
    good = tmp_path / "good.fits"
    write_exposure(good, exp)
    data = good.read_bytes()
    with fits.open(good) as h:
        loc = {x.name: x.fileinfo() for x in h}
    cut = {"image data": loc["IMAGE"]["datLoc"] + 5000,
           "mask data": loc["MASK"]["datLoc"] + 5000,
           "variance data": loc["VARIANCE"]["datLoc"] + 5000,
           # only the last two pixels missing: within the last 2880-byte block, so
           # the direct reader's size check must catch it
           "last pixels": loc["VARIANCE"]["datLoc"] + exp.variance.nbytes - 8,
           "photocalib data": loc.get("PHOTOCALIB", {}).get("datLoc", 0) + 8,
           "mask header": loc["MASK"]["hdrLoc"] + 400,
           "data start": loc["IMAGE"]["datLoc"]}[where]
    bad = tmp_path / "cut.fits"
    bad.write_bytes(data[:cut])
    with pytest.raises(UserError) as exc:
        read_exposure(bad)
    msg = str(exc.value)
    assert "\n" not in msg and f"{bad}{hdu}" in msg and "truncated" in msg
    if where == "last pixels":
        assert "8 bytes before the data does" in msg
    # padding missing but every pixel present: still readable, as astropy allows
    full = tmp_path / "nopad.fits"
    full.write_bytes(data[:loc["VARIANCE"]["datLoc"] + exp.variance.nbytes]
                     if where == "last pixels" else data)
    assert read_exposure(full).variance.tobytes() == exp.variance.tobytes()


def test_lsst_calexp_reads_as_an_exposure(shared_data):
    # an LSST/AFW calexp (CFHT MegaCam, pixels zeroed upstream) has our IMAGE/MASK/
    # VARIANCE layout and MP_ mask keys, plus tables of its own: a "PhotoCalib" table
    # (not our PHOTOCALIB image) and CFHT's CCD = 'Marconi/EEV CCD42-90' keyword
    path = shared_data / "cfht-d3-ccd12-metadata" / "calexp-849375-12.fits.fz"
    exp = read_exposure(path)
    with fits.open(path) as h:
        prim, mask_h = h[0].header, h["MASK"].header
        assert exp.image.shape == (h["IMAGE"].header["NAXIS2"],
                                   h["IMAGE"].header["NAXIS1"]) == (4612, 2048)
    assert exp.photo_calib is None and exp.wcs is not None
    assert exp.info.ccd is None and exp.info.exptime == prim["EXPTIME"]
    for name in ("BAD", "SAT", "INTRP", "CR", "NO_DATA"):
        assert exp.mask_planes.bit(name) == mask_h[f"MP_{name}"]
