"""Applying a CCD's calibration to its Exposure (the CALEXP)."""
from __future__ import annotations

import numpy as np

from ..image.exposure import Exposure, ExposureInfo
from ..image.photocalib import PhotoCalib
from .sources import CcdCalibration


def calibrate_exposure(exposure: Exposure, calibration: CcdCalibration) -> Exposure:
    """A new Exposure in nJy per pixel with the fitted WCS (``exposure`` is unchanged).

    The flux calibration is evaluated at every pixel (its spatial variation included):
    ``image' = image * calib(x, y)``, ``variance' = variance * calib(x, y)**2``. The mask
    is kept. The WCS becomes the fitted one (the input's for ``header`` calibrations). The
    result's ``photo_calib`` is the constant 1 nJy per pixel value.

    Parameters
    ----------
    exposure : Exposure
        The ingested CCD (pixel values in counts).
    calibration : CcdCalibration

    Returns
    -------
    Exposure
    """
    calib = calibration.photo_calib.evaluate_image(exposure.shape)
    # float64 products, stored as float32 by Exposure; inf variance (no data) stays inf.
    image = exposure.image.astype(np.float64) * calib
    with np.errstate(invalid="ignore", over="ignore"):
        variance = exposure.variance.astype(np.float64) * calib ** 2
    ny, nx = exposure.shape
    info = ExposureInfo(**{k: getattr(exposure.info, k)
                           for k in exposure.info.__dataclass_fields__})
    return Exposure(image=image, mask=exposure.mask.copy(), variance=variance,
                    wcs=calibration.wcs if calibration.wcs is not None else exposure.wcs,
                    photo_calib=PhotoCalib.constant(1.0, bbox=(0, 0, nx, ny)),
                    info=info, mask_planes=exposure.mask_planes,
                    header=dict(exposure.header))


def calibration_header(calibration: CcdCalibration) -> dict:
    """Header keywords recording the calibration (CALIBSRC, CALIBFIL, CALIBWCS, MAGZP).

    ``MAGZP`` is the AB magnitude of one count of the *input* pixel values, from the mean
    calibration over the CCD; ``BUNIT`` says the pixel values are now nJy.
    """
    h = {
        "CALIBSRC": (calibration.source, "calibration source: jointcal|mosaic|header"),
        # file names can be long: no comments, so astropy writes CONTINUE cards cleanly
        "CALIBFIL": calibration.calib_file,
        "CALIBWCS": calibration.wcs_file or "input header",
        "MAGZP": (round(calibration.zero_point, 6), "AB mag of 1 input count (CCD mean)"),
        "CALIBORG": (calibration.photo_calib.mean, "mean input calibration [nJy/count]"),
        "BUNIT": ("nJy", "pixel values are calibrated flux per pixel"),
    }
    return h
