"""Where a CCD's calibration comes from: jointcal or mosaic results, or the input header.

``calibSource`` (a config field of both calibrate tasks):

- ``jointcal`` / ``mosaic``: the fitted WCS (``<fit>_wcs-<visit>-<ccd>.fits``) and flux
  calibration (``<fit>_photoCalib-...``) of the tract, searched in the rerun chain;
- ``auto``: whichever of the two exists; when both do for the selected CCDs the task refuses
  to guess (the user picks with ``--config calibSource=...``);
- ``header``: no fit; the WCS of the input header and the zero point of a header keyword
  or a zero-point table (:mod:`.zeropoints`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from astropy.io import fits
from astropy.wcs import WCS

from ..errors import DataQualityError, UserError
from ..image.photocalib import PhotoCalib
from ..image.wcs_io import read_wcs
from . import zeropoints

#: The allowed values of ``calibSource``.
CALIB_SOURCES = ("auto", "jointcal", "mosaic", "header")
FITTED_SOURCES = ("jointcal", "mosaic")


@dataclass
class CcdCalibration:
    """The calibration of one CCD.

    Attributes
    ----------
    source : str
        ``jointcal``, ``mosaic`` or ``header`` (written as CALIBSRC).
    wcs : astropy.wcs.WCS or None
        Fitted pixel (0-based) → sky map; None for ``header`` (the input WCS is kept).
    photo_calib : PhotoCalib
        nJy per count of the input pixel values.
    calib_file : str
        The file (relative to the repository root where possible) the flux calibration
        came from (written as CALIBFIL); for a header keyword ``file[KEY]``.
    wcs_file : str or None
        The file the WCS came from.
    """

    source: str
    wcs: WCS | None
    photo_calib: PhotoCalib
    calib_file: str
    wcs_file: str | None = None

    @property
    def zero_point(self) -> float:
        """AB zero point (mag of one count) of the mean calibration over the CCD."""
        return zeropoints.zero_point_of(self.photo_calib.mean)


def fitted_files(repo, fit: str, tract: int, visit: int, ccd: int) -> tuple:
    """Existing ``(wcs_path, photoCalib_path)`` of ``fit`` for one CCD (None if absent)."""
    ids = dict(tract=tract, visit=visit, ccd=ccd)
    return repo.find(f"{fit}_wcs", **ids), repo.find(f"{fit}_photoCalib", **ids)


def available_fits(repo, tract: int, visit: int, ccd: int) -> list[str]:
    """The fits (``jointcal``, ``mosaic``) with any result file for this CCD and tract."""
    return [f for f in FITTED_SOURCES if any(fitted_files(repo, f, tract, visit, ccd))]


def resolve_source(repo, calib_source: str, tract: int, visit: int, ccd: int) -> str:
    """The concrete source (``jointcal``, ``mosaic``, ``header``) for one CCD.

    Raises
    ------
    UserError
        ``auto`` while both jointcal and mosaic results exist (ambiguous).
    DataQualityError
        No calibration of the requested kind for this CCD and tract.
    """
    if calib_source not in CALIB_SOURCES:
        raise UserError(f"--config calibSource={calib_source}: use one of "
                        + ", ".join(CALIB_SOURCES))
    if calib_source == "header":
        return "header"
    if calib_source in FITTED_SOURCES:
        return calib_source
    found = available_fits(repo, tract, visit, ccd)
    if len(found) == 2:
        raise UserError(ambiguous_message(tract))
    if not found:
        raise DataQualityError(
            f"no jointcal or mosaic calibration for tract {tract} in rerun "
            f"{_chain(repo)}; run jointcal.py or mosaic.py on tract {tract}, or use "
            "--config calibSource=header")
    return found[0]


def ambiguous_message(tract: int) -> str:
    """The one-line refusal of ``calibSource=auto`` when both fits exist."""
    return (f"tract {tract} has both jointcal and mosaic results; choose one with "
            "--config calibSource=jointcal or --config calibSource=mosaic")


def load_calibration(repo, row: dict, tract: int, config) -> CcdCalibration:
    """The calibration of the CCD of registry ``row`` for ``tract``.

    Parameters
    ----------
    repo : tractpatch.repo.Repository
    row : dict
        Registry row of the CCD.
    tract : int
        Tract of the fit (ignored for ``calibSource=header``).
    config : CalibrateConfig
        ``calibSource`` and the zero-point options.

    Raises
    ------
    DataQualityError
        A calibration file is missing or unreadable (the CCD is skipped).
    """
    visit, ccd = int(row["visit"]), int(row["ccd"])
    source = resolve_source(repo, config.calibSource, tract, visit, ccd)
    if source == "header":
        zp, where = zeropoints.header_zero_point(config, repo, row)
        nx, ny = row.get("nx") or 1, row.get("ny") or 1
        calib = PhotoCalib.constant(zeropoints.njy_per_count(zp), bbox=(0, 0, nx, ny))
        return CcdCalibration("header", None, calib, where, None)
    wcs_path, calib_path = fitted_files(repo, source, tract, visit, ccd)
    if wcs_path is None or calib_path is None:
        missing = [f"{source}_{k}" for k, p in (("wcs", wcs_path),
                                                ("photoCalib", calib_path)) if p is None]
        raise DataQualityError(
            f"no {' and '.join(missing)} for tract {tract} in rerun {_chain(repo)}; "
            f"run {source}.py on tract {tract} including this CCD, or choose another "
            "--config calibSource")
    return CcdCalibration(source, read_fitted_wcs(wcs_path), read_photo_calib(calib_path),
                          _relative(repo, calib_path), _relative(repo, wcs_path))


def read_fitted_wcs(path) -> WCS:
    """The WCS in the primary header of a ``*_wcs-*.fits`` result file."""
    try:
        header = fits.getheader(path, 0)
    except (OSError, ValueError) as exc:
        raise DataQualityError(f"{path}: unreadable WCS file ({exc}); rerun the fit") from None
    try:
        wcs = read_wcs(header, source=str(path))
    except UserError as exc:
        raise DataQualityError(str(exc)) from None
    # A header-only file has NAXIS = 0, so the CCD size is in IMAGEW/IMAGEH
    # (astrometry.net's convention, what jointcal writes) or non-standard NAXIS1/NAXIS2.
    for kx, ky in (("IMAGEW", "IMAGEH"), ("NAXIS1", "NAXIS2")):
        nx, ny = header.get(kx), header.get(ky)
        if nx and ny:
            wcs.pixel_shape = (int(nx), int(ny))
            break
    return wcs


def read_photo_calib(path) -> PhotoCalib:
    """The PhotoCalib of a ``*_photoCalib-*.fits`` result file."""
    try:
        return PhotoCalib.read(path)
    except (OSError, ValueError, KeyError) as exc:
        raise DataQualityError(f"{path}: unreadable photoCalib file ({exc}); "
                               "rerun the fit") from None


def _relative(repo, path) -> str:
    try:
        return str(Path(path).relative_to(repo.root))
    except ValueError:
        return str(path)


def _chain(repo) -> str:
    return ":".join(reversed([repo.rerun, *repo.input_reruns])) if repo.rerun else "(none)"
