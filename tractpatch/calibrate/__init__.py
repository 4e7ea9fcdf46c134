"""Applying calibrations to CCDs and their catalogs (calibrateExposure, calibrateCatalog).

Where a CCD's calibration comes from (:mod:`.sources`: jointcal or mosaic results, or the
input header with a zero point from :mod:`.zeropoints`), how it is applied to an Exposure
(:mod:`.exposure`, written as CALEXP) and to a SRC catalog (:mod:`.catalog`, written as
CALSRC), and the two command-line tasks (:mod:`.tasks`).
"""
from .sources import CcdCalibration, load_calibration, resolve_source
from .exposure import calibrate_exposure
from .catalog import calibrate_catalog

__all__ = ["CcdCalibration", "load_calibration", "resolve_source", "calibrate_exposure",
           "calibrate_catalog"]
