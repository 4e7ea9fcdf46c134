"""Image model (Exposure, mask planes, photometric calibration) and FITS I/O."""
from .mask import MaskPlanes, DEFAULT_MASK_PLANES
from .photocalib import PhotoCalib
from .exposure import Exposure, ExposureInfo
from .fits_io import read_exposure, write_exposure, read_image_file
from .wcs_io import read_wcs, wcs_to_header, fix_header_quirks

__all__ = [
    "MaskPlanes", "DEFAULT_MASK_PLANES", "PhotoCalib", "Exposure", "ExposureInfo",
    "read_exposure", "write_exposure", "read_image_file", "read_wcs", "wcs_to_header",
    "fix_header_quirks",
]
