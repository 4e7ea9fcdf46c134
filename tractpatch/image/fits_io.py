"""FITS readers and writers for Exposures.

Formats read:

- our MEF: primary header with metadata; EXTNAME ``IMAGE`` (float32), ``MASK`` (int32,
  ``MP_<NAME> = bit`` cards), ``VARIANCE`` (float32), each with the WCS; optional
  ``PHOTOCALIB`` (the :class:`PhotoCalib` Chebyshev coefficients);
- a single-image FITS file (primary HDU) or one image extension of an MEF (the
  SExtractor/SCAMP/SWarp one-CCD-per-extension convention);
- tile-compressed (fpack) images, transparently;
- companion weight (inverse variance), variance or mask files;
- Pan-STARRS1 asinh-scaled stacks: ``flux = BOFFSET + BSOFTEN * 2 sinh(v / 1.0857362)``.

Plain (uncompressed, unscaled) image planes are read straight into native arrays by
:mod:`.fits_read`; everything else goes through astropy.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..atomic import write_fits_atomic
from ..errors import UserError
from .exposure import Exposure, ExposureInfo
from .fits_read import FITS_MAGIC, read_plain_image
from .mask import MaskPlanes
from .photocalib import PhotoCalib
from .wcs_io import read_wcs, wcs_to_header

#: 2.5 log10(e): the asinh magnitude softening constant of the PS1 stacks.
PS1_ASINH_A = 1.0857362


def open_fits(path) -> fits.HDUList:
    """Open a FITS file, turning unreadable or non-FITS files into a one-line UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path")
    try:
        hdul = fits.open(path, memmap=False)
        hdul.verify("silentfix+ignore")
        # Touch every header so truncated files fail here, not later.
        for hdu in hdul:
            _ = hdu.header
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise UserError(f"{path}: not a readable FITS file ({exc}); "
                        "re-copy the file or leave it out") from None
    try:
        _check_complete(hdul, path)
    except BaseException:
        hdul.close()
        raise
    return hdul


def _check_complete(hdul, path) -> None:
    """UserError when a plain FITS file ends inside its last HDU.

    astropy only warns: it drops the HDUs it cannot find, so a calexp cut inside its
    MASK would otherwise read as a foreign single image without mask or variance.
    Missing padding after the data (the last partial 2880-byte block) is left to the
    data readers, which fail only if pixels are missing.
    """
    with open(path, "rb") as f:
        if f.read(len(FITS_MAGIC)) != FITS_MAGIC:
            return  # gzip etc.: astropy's offsets are in the decompressed stream
        size = os.fstat(f.fileno()).st_size
        last = hdul[-1]
        info = last.fileinfo()
        if not info:
            return
        end = int(info["datLoc"]) + int(info["datSpan"])
        name = last.name or str(len(hdul) - 1)
        if size < end - 2879:
            raise UserError(f"{path}[{name}]: pixel data cannot be read (the file is "
                            f"{end - size} bytes shorter than its headers say); the file "
                            "is truncated or corrupt: re-copy it")
        if size > end:
            f.seek(end)
            if f.read(8) == b"XTENSION":
                raise UserError(f"{path}[{len(hdul)}]: the file ends inside this "
                                "extension's header; the file is truncated or corrupt: "
                                "re-copy it")


def _image_data(hdu, path, name):
    """The 2-D pixels of ``hdu``: read directly when plain, else through astropy."""
    data = read_plain_image(hdu, path, name)
    if data is not None:
        return data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = hdu.data
    except Exception as exc:  # truncated data sections raise various errors
        raise UserError(f"{path}[{name}]: pixel data cannot be read ({exc}); "
                        "the file is truncated or corrupt: re-copy it") from None
    if data is None or data.ndim != 2:
        raise UserError(f"{path}[{name}]: no 2-D image in this HDU; give the image HDU")
    return data


def undo_asinh_scaling(data: np.ndarray, header) -> np.ndarray:
    """Linear flux from a PS1 asinh-scaled image (``BSOFTEN``/``BOFFSET`` keywords)."""
    if "BSOFTEN" not in header or "BOFFSET" not in header:
        return data
    return float(header["BOFFSET"]) + float(header["BSOFTEN"]) * 2.0 * np.sinh(
        np.asarray(data, dtype=np.float64) / PS1_ASINH_A)


def write_exposure(path, exposure: Exposure, extra_header=None) -> None:
    """Write ``exposure`` as our MEF atomically.

    Parameters
    ----------
    path : str or Path
    exposure : Exposure
    extra_header : dict, optional
        Keywords for the primary header (provenance: task, config hash, version).
    """
    prim = fits.PrimaryHDU()
    exposure.info.to_header(prim.header)
    for k, v in exposure.header.items():
        if k not in prim.header:
            prim.header[k if len(k) <= 8 else f"HIERARCH {k}"] = v
    if extra_header:
        for k, v in extra_header.items():
            prim.header[k if len(k) <= 8 else f"HIERARCH {k}"] = v
    if exposure.photo_calib is not None:
        pc = exposure.photo_calib
        prim.header["FLUXMAG0"] = (pc.flux_mag0, "counts of a 0 mag AB source")
        prim.header["CALIBMN"] = (pc.mean, "mean calibration [nJy/count]")
    wcs_h = wcs_to_header(exposure.wcs) if exposure.wcs is not None else fits.Header()
    hdus = [prim]
    for name, data in (("IMAGE", exposure.image.astype(np.float32)),
                       ("MASK", exposure.mask.astype(np.int32)),
                       ("VARIANCE", exposure.variance.astype(np.float32))):
        hdu = fits.ImageHDU(data, name=name)
        hdu.header.update(wcs_h)
        if name == "MASK":
            exposure.mask_planes.to_header(hdu.header)
        hdus.append(hdu)
    if exposure.photo_calib is not None:
        pcl = exposure.photo_calib.to_hdulist()
        ph = fits.ImageHDU(pcl["CHEBYSHEV"].data, name="PHOTOCALIB")
        for k in ("CALIBMN", "CALIBERR", "FLUXMAG0", "BBOX_X0", "BBOX_Y0", "BBOX_X1",
                  "BBOX_Y1"):
            ph.header[k] = pcl[0].header[k]
        hdus.append(ph)
    write_fits_atomic(path, fits.HDUList(hdus))


def is_tractpatch_mef(hdul: fits.HDUList) -> bool:
    """True for our MEF layout (IMAGE, MASK, VARIANCE extensions)."""
    names = {h.name for h in hdul}
    return {"IMAGE", "MASK", "VARIANCE"} <= names


def read_exposure(path, hdu=None, **kwargs) -> Exposure:
    """Read an Exposure from our MEF, or any other image file via :func:`read_image_file`.

    Parameters
    ----------
    path : str or Path
    hdu : int or str, optional
        Image HDU for files that are not our MEF (for our MEF: None or the IMAGE HDU).
    **kwargs
        Passed to :func:`read_image_file` for foreign files.
    """
    with open_fits(path) as hdul:
        if is_tractpatch_mef(hdul) and (hdu is None or hdul[hdu].name == "IMAGE"):
            return _read_mef(hdul, path)
    return read_image_file(path, hdu=hdu, **kwargs)


def _read_mef(hdul, path) -> Exposure:
    prim = hdul[0].header
    img_h = hdul["IMAGE"].header
    image = _image_data(hdul["IMAGE"], path, "IMAGE")
    mask = _image_data(hdul["MASK"], path, "MASK")
    var = _image_data(hdul["VARIANCE"], path, "VARIANCE")
    wcs = read_wcs(img_h, source=str(path)) if "CTYPE1" in img_h else None
    pc = None
    # LSST calexps have IMAGE/MASK/VARIANCE too, and a "PhotoCalib" binary table of
    # their own (EXTNAMEs match regardless of case): only our image HDU is read
    if "PHOTOCALIB" in hdul and hdul["PHOTOCALIB"].is_image \
            and "BBOX_X0" in hdul["PHOTOCALIB"].header:
        ph = hdul["PHOTOCALIB"].header
        bbox = tuple(float(ph[k]) for k in ("BBOX_X0", "BBOX_Y0", "BBOX_X1", "BBOX_Y1"))
        coeffs = _image_data(hdul["PHOTOCALIB"], path, "PHOTOCALIB")
        pc = PhotoCalib(np.array(coeffs, dtype=np.float64), bbox,
                        float(ph.get("CALIBERR", 0.0)))
    info = ExposureInfo.from_header(prim)
    skip = set(fits.PrimaryHDU().header) | set(ExposureInfo.KEYWORDS.values()) | {
        "FLUXMAG0", "CALIBMN", "COMMENT", "HISTORY", "", "CHECKSUM", "DATASUM"}
    extra = {k: prim[k] for k in prim.keys() if k not in skip}
    return Exposure(image=image, mask=mask, variance=var, wcs=wcs, photo_calib=pc,
                    info=info, mask_planes=MaskPlanes.from_header(hdul["MASK"].header),
                    header=extra)


def _pick_image_hdu(hdul, hdu, path):
    if hdu is not None:
        try:
            return hdul[hdu]
        except (KeyError, IndexError):
            raise UserError(f"{path}: no HDU {hdu!r}; the file has "
                            f"{len(hdul)} HDUs") from None
    for h in hdul:
        if h.is_image and h.header.get("NAXIS", 0) == 2:
            return h
    raise UserError(f"{path}: no 2-D image HDU found; is this an image file?")


def read_plane(path, hdu=None) -> tuple[np.ndarray, fits.Header]:
    """Read one 2-D plane (image, weight, variance or mask) and its header."""
    with open_fits(path) as hdul:
        h = _pick_image_hdu(hdul, hdu, path)
        data = _image_data(h, path, h.name or hdu)
        if not data.flags.owndata:  # astropy's view of its buffer: detach it as before
            data = np.array(data)
        return data, h.header.copy()


def merged_header(hdul, image_hdu) -> fits.Header:
    """The image HDU's header on top of the primary header (FITS ``INHERIT``)."""
    skip = {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "COMMENT", "HISTORY", ""}
    cards = {}
    if image_hdu is not hdul[0]:
        cards.update((c.keyword, c) for c in hdul[0].header.cards if c.keyword not in skip)
    cards.update((c.keyword, c) for c in image_hdu.header.cards
                 if c.keyword not in ("COMMENT", "HISTORY", ""))
    return fits.Header(list(cards.values()))


def read_image_file(path, hdu=None, weight=None, variance=None, mask=None,
                    mask_codes=None, quirks=(), info=None, bad_weight_is_nodata=True):
    """Read a foreign image (single HDU, one extension of an MEF, fpack) as an Exposure.

    Parameters
    ----------
    path : str or Path
    hdu : int or str, optional
        The image HDU; default the first 2-D image.
    weight, variance, mask : tuple (path, hdu) or None
        Companion planes: inverse variance, variance, or integer mask.
    mask_codes : dict, optional
        ``{"kind": "bits"|"values", "map": {code: PLANE}}`` translating a foreign mask;
        without it any non-zero mask pixel is BAD.
    quirks : iterable of str
        Header quirk sets (``"ps1"``).
    info : ExposureInfo, optional
        Metadata; default read from the header keywords we write.

    Returns
    -------
    Exposure
        Variance from the weight/variance companion, else a constant estimated from the
        image's robust scatter; NaN pixels are masked NO_DATA.
    """
    path = Path(path)
    with open_fits(path) as hdul:
        h = _pick_image_hdu(hdul, hdu, path)
        data = _float_pixels(_image_data(h, path, h.name or hdu))
        header = merged_header(hdul, h)
    data = undo_asinh_scaling(data, header)
    wcs = read_wcs(header, quirks=quirks, source=f"{path}")
    mp = MaskPlanes()
    maskarr = np.zeros(data.shape, dtype=np.int32)
    if mask is not None:
        raw, _ = read_plane(*mask)
        maskarr |= translate_mask(raw.astype(np.int64), mask_codes, mp)
    if weight is not None:
        w, _ = read_plane(*weight)
        good = w > 0
        # 1 / w where the weight is positive, else infinite (never NaN): in the type of
        # 1.0 / w, without the full-size temporaries of np.where(good, 1.0 / w, inf)
        var = np.full(w.shape, np.inf, dtype=np.result_type(w.dtype, 1.0))
        with np.errstate(over="ignore"):  # 1 / subnormal weight: infinite, as intended
            np.divide(1.0, w, out=var, where=good)
        if bad_weight_is_nodata and not good.all():
            maskarr[~good] |= mp.bitmask("NO_DATA")
    elif variance is not None:
        var, _ = read_plane(*variance)
        var = _float_pixels(var)
        var[~np.isfinite(var)] = np.inf
    else:
        # float32 directly: the float64 value rounds to the same float32 as before
        var = np.full(data.shape, estimate_noise(data) ** 2, dtype=np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        maskarr[bad] |= mp.bitmask("NO_DATA")
        data[bad] = 0.0  # ours (see _float_pixels): no full-size copy
    if bad.all():
        raise UserError(f"{path}: every pixel is NaN or infinite; leave the file out")
    if info is None:
        info = ExposureInfo.from_header(header)
    # Exposure converts float64 to float32 (as astype did) and keeps float32 uncopied.
    return Exposure(image=data, mask=maskarr, variance=var, wcs=wcs, info=info,
                    mask_planes=mp)


def _float_pixels(data: np.ndarray) -> np.ndarray:
    """``data`` as a floating array of our own to write into: float32 kept, else float64.

    Keeping float32 planes in float32 saves two full-size copies per CCD and changes no
    value: float32 -> float64 -> float32 is exact and :func:`estimate_noise` and
    :func:`undo_asinh_scaling` compute in float64 whatever they are given.
    """
    if data.dtype == np.float32:
        f = data.flags
        if data.dtype.isnative and f.owndata and f.writeable and f.c_contiguous:
            return data
        return np.array(data, dtype=np.float32)
    return np.array(data, dtype=np.float64)


def translate_mask(raw: np.ndarray, mask_codes, mp: MaskPlanes) -> np.ndarray:
    """Map a foreign integer mask to our bit planes (see :func:`read_image_file`)."""
    out = np.zeros(raw.shape, dtype=np.int32)
    if not mask_codes:
        out[raw != 0] = mp.bitmask("BAD")
        return out
    kind = mask_codes.get("kind", "bits")
    mapped = np.zeros(raw.shape, dtype=bool)
    for code, plane in mask_codes["map"].items():
        code = int(code)
        hit = (raw & code) != 0 if kind == "bits" else raw == code
        out[hit] |= mp.bitmask(plane)
        mapped |= hit
    out[(raw != 0) & ~mapped] |= mp.bitmask("BAD")  # unknown codes are bad
    return out


def estimate_noise(data: np.ndarray) -> float:
    """Robust per-pixel noise (1.4826 MAD) of the finite pixels of ``data``."""
    d = data[np.isfinite(data)]
    if d.size > 200_000:
        d = d[:: d.size // 200_000]
    d = np.asarray(d, dtype=np.float64)  # the same answer for float32 and float64 data
    if d.size == 0:
        return 1.0
    mad = np.median(np.abs(d - np.median(d)))
    return float(1.4826 * mad) if mad > 0 else float(np.std(d) or 1.0)
