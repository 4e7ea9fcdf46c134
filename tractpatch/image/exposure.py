"""The Exposure: one CCD image with its mask, variance, WCS, calibration and metadata."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
from astropy.wcs import WCS

from .mask import MaskPlanes
from .photocalib import PhotoCalib


@dataclass
class ExposureInfo:
    """Per-CCD metadata, written to and read from FITS keywords (names in ``KEYWORDS``).

    Times: ``mjd`` is in the time scale ``timesys`` (written as ``TIMESYS``).
    """

    visit: int | None = None
    ccd: int | None = None
    ccdname: str | None = None
    filter: str | None = None
    field: str | None = None
    pointing: int | None = None
    instrument: str | None = None
    exptime: float | None = None
    mjd: float | None = None
    date_obs: str | None = None
    timesys: str = "UTC"
    gain: float | None = None
    saturation: float | None = None
    psf_fwhm: float | None = None  # arcsec

    KEYWORDS = {
        "visit": "VISIT", "ccd": "CCD", "ccdname": "CCDNAME", "filter": "FILTER",
        "field": "FIELD", "pointing": "POINTING", "instrument": "INSTRUME",
        "exptime": "EXPTIME", "mjd": "MJD-OBS", "date_obs": "DATE-OBS",
        "timesys": "TIMESYS", "gain": "GAIN", "saturation": "SATURATE",
        "psf_fwhm": "PSFFWHM",
    }

    def to_header(self, header) -> None:
        """Write the set fields as keywords (TIMESYS whenever a time is written)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.name == "timesys":
                continue
            if isinstance(value, float) and not math.isfinite(value):
                continue
            header[self.KEYWORDS[f.name]] = value
        if self.mjd is not None or self.date_obs is not None:
            header["TIMESYS"] = self.timesys

    _INTS = ("visit", "ccd", "pointing")
    _FLOATS = ("exptime", "mjd", "gain", "saturation", "psf_fwhm")

    @classmethod
    def from_header(cls, header) -> "ExposureInfo":
        """Read the keywords written by :meth:`to_header`.

        A keyword of the wrong type (other software's, e.g. CFHT's ``CCD = 'Marconi/EEV
        CCD42-90'`` in an LSST calexp) is ignored: the registry holds the data ID.
        """
        kw = {}
        for f in fields(cls):
            key = cls.KEYWORDS[f.name]
            if key not in header:
                continue
            v = header[key]
            kind = int if f.name in cls._INTS else float if f.name in cls._FLOATS \
                else None
            if kind is not None:
                if isinstance(v, bool):
                    continue
                try:
                    v = kind(v)
                except (TypeError, ValueError):
                    continue
            kw[f.name] = v
        return cls(**kw)

    def data_id(self) -> dict:
        """The CCD-level data ID ``{'visit': ..., 'ccd': ...}``."""
        return {"visit": self.visit, "ccd": self.ccd}


@dataclass
class Exposure:
    """An image with mask bit planes, variance, WCS, photometric calibration and metadata.

    Attributes
    ----------
    image : ndarray (float32, ny x nx)
    mask : ndarray (int32), bits named by ``mask_planes``
    variance : ndarray (float32), per pixel, in image units squared
    wcs : astropy.wcs.WCS or None
        Pixel (0-based) to sky.
    photo_calib : PhotoCalib or None
        nJy per count.
    info : ExposureInfo
    mask_planes : MaskPlanes
    header : dict
        Extra keywords carried through (provenance and instrument keywords).
    """

    image: np.ndarray
    mask: np.ndarray | None = None
    variance: np.ndarray | None = None
    wcs: WCS | None = None
    photo_calib: PhotoCalib | None = None
    info: ExposureInfo = field(default_factory=ExposureInfo)
    mask_planes: MaskPlanes = field(default_factory=MaskPlanes)
    header: dict = field(default_factory=dict)

    def __post_init__(self):
        self.image = np.asarray(self.image, dtype=np.float32)
        if self.mask is None:
            self.mask = np.zeros(self.image.shape, dtype=np.int32)
        else:
            self.mask = np.asarray(self.mask, dtype=np.int32)
        if self.variance is None:
            self.variance = np.ones(self.image.shape, dtype=np.float32)
        else:
            self.variance = np.asarray(self.variance, dtype=np.float32)
        if not (self.image.shape == self.mask.shape == self.variance.shape):
            raise ValueError(f"image {self.image.shape}, mask {self.mask.shape} and "
                             f"variance {self.variance.shape} differ in shape")

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx)."""
        return self.image.shape

    def sky_corners(self) -> np.ndarray:
        """RA, Dec (deg) of the four CCD corners, shape (4, 2)."""
        from .wcs_io import pixel_corners_to_sky

        return pixel_corners_to_sky(self.wcs, self.shape)

    def good_pixels(self, bad_planes=("BAD", "SAT", "CR", "NO_DATA", "EDGE")) -> np.ndarray:
        """Boolean array of pixels with none of ``bad_planes`` set and finite values."""
        bad = self.mask & self.mask_planes.bitmask(*bad_planes)
        return (bad == 0) & np.isfinite(self.image) & np.isfinite(self.variance)
