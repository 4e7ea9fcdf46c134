"""``calibrateExposure.py`` and ``calibrateCatalog.py``: apply calibrations per CCD.

::

    calibrateExposure.py ROOT --rerun R --id field=NGC604 tract=0 ccd=0..103 -j 8
    calibrateCatalog.py ROOT --rerun R --id visit=1228..1232:2 tract=0 \\
        --config doApplyCalib=False
    calibrateExposure.py ROOT --rerun R --id filter=k --config calibSource=header

One unit of work is one CCD and one tract. ``tract`` in ``--id`` selects the fit whose
results are applied (several tracts: one output per tract). Without ``tract``: with
``calibSource=header`` the outputs go to tract 0 (the tract is then only a key of the
output path); otherwise every tract that has jointcal/mosaic results in the rerun chain.
A CCD without a calibration for the tract is skipped with one line saying why (recorded
in the ledger) and the run goes on.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from astropy.io import fits
from pydantic import Field

from ..atomic import write_fits_atomic
from ..cli import CmdLineTask, TaskConfig
from ..errors import DataQualityError, UserError
from ..image.fits_io import write_exposure
from ..image.wcs_io import read_wcs
from ..repo.exposure_io import load_exposure
from . import zeropoints
from .catalog import calibrate_catalog, read_src, replace_wcs_keywords, src_hdu
from .exposure import calibrate_exposure, calibration_header
from .sources import (FITTED_SOURCES, CcdCalibration, ambiguous_message, available_fits,
                      load_calibration)

#: Tract used in output paths for ``calibSource=header`` when ``--id`` names none.
DEFAULT_HEADER_TRACT = 0


class CalibrateConfig(TaskConfig):
    """Configuration shared by calibrateExposure and calibrateCatalog."""

    calibSource: Literal["auto", "jointcal", "mosaic", "header"] = Field(
        "auto", description="where the calibration comes from: jointcal or mosaic results "
        "of the tract, 'auto' (whichever exists; refuses when both do), or 'header' (input "
        "WCS and a zero point from zeroPointKeyword or zeroPointTable; no fit needed)")
    zeroPointKeyword: str = Field(
        "MAGZP", description="calibSource=header: header keyword holding the AB zero point "
        "(magnitude of 1 count, e.g. 2MASS MAGZP)")
    zeroPointKeywordPerSecond: bool = Field(
        False, description="the keyword's zero point is for 1 count per second (add "
        "2.5 log10(EXPTIME))")
    zeroPointTable: str | None = Field(
        None, description="calibSource=header: a table with one zero point per CCD (e.g. "
        "Legacy Surveys survey-ccds-*.fits.gz); used instead of zeroPointKeyword")
    zeroPointTableVisitColumn: str = Field(
        "expnum", description="column of zeroPointTable matched against the visit")
    zeroPointTableCcdColumn: str = Field(
        "ccdname", description="column of zeroPointTable matched against the CCD")
    zeroPointTableCcdKey: Literal["ccdname", "ccd"] = Field(
        "ccdname", description="registry key compared with zeroPointTableCcdColumn")
    zeroPointColumn: str = Field(
        "ccdzpt", description="column of zeroPointTable with the AB zero point")
    zeroPointTablePerSecond: bool = Field(
        True, description="the table's zero point is for 1 count per second (Legacy "
        "Surveys ccdzpt for DECam): zpt_exp = ccdzpt + 2.5 log10(exptime)")


class CalibrateCatalogConfig(CalibrateConfig):
    """Configuration of calibrateCatalog."""

    doApplyCalib: bool = Field(
        True, description="convert fluxes to nJy and AB magnitudes (False: keep the "
        "instrumental fluxes, recompute only the sky coordinates)")


class _CalibrateTask(CmdLineTask):
    """What both calibrate tasks share: units (CCD × tract) and calibration lookup."""

    level = "ccd"

    def units(self, ids, select) -> list[dict]:
        """One unit per (CCD, tract) for every ``--id``; checks ``auto`` ambiguity."""
        config = self.config
        if config.calibSource == "header":
            zeropoints.check_table(config)
        units: dict[tuple, dict] = {}
        for spec in ids or [None]:
            rows = self.repo.registry.exposures([spec] if spec is not None else None)
            tracts = spec.terms.get("tract") if spec is not None else None
            for tract in tracts or self._default_tracts():
                for r in rows:
                    unit = {"visit": r["visit"], "ccd": r["ccd"], "filter": r["filter"],
                            "pointing": r["pointing"] if r["pointing"] is not None else 0,
                            "field": r["field"], "tract": int(tract)}
                    units.setdefault((r["visit"], r["ccd"], int(tract)), unit)
        result = list(units.values())
        if config.calibSource == "auto":
            for u in result:
                if len(available_fits(self.repo, u["tract"], u["visit"], u["ccd"])) == 2:
                    raise UserError(ambiguous_message(u["tract"]))
        return result

    def _default_tracts(self) -> list[int]:
        """Tracts when ``--id`` names none (see the module docstring)."""
        if self.config.calibSource == "header":
            return [DEFAULT_HEADER_TRACT]
        fits_ = FITTED_SOURCES if self.config.calibSource == "auto" else \
            (self.config.calibSource,)
        found = set()
        for rerun in [self.repo.rerun, *self.repo.input_reruns]:
            for fit in fits_:
                d = self.repo.root / "rerun" / rerun / f"{fit}-results"
                if d.is_dir():
                    found.update(int(p.name) for p in d.iterdir()
                                 if p.is_dir() and p.name.lstrip("-").isdigit())
        if not found:
            raise UserError(
                f"no {' or '.join(fits_)} results in rerun {self.repo.rerun} or its "
                "inputs, and --id names no tract; run jointcal.py/mosaic.py first, give "
                "--id tract=N, or use --config calibSource=header")
        return sorted(found)

    def _row_and_calibration(self, data_id: dict) -> tuple[dict, CcdCalibration]:
        row = self.repo.registry.exposure(data_id["visit"], data_id["ccd"])
        return row, load_calibration(self.repo, row, data_id["tract"], self.config)


def _check_shape(calibration: CcdCalibration, shape, data_id) -> None:
    """A fitted WCS for a CCD of another size is for another CCD: refuse it."""
    w = calibration.wcs
    if w is None or w.pixel_shape is None or not all(w.pixel_shape):
        return
    nx, ny = w.pixel_shape
    if (ny, nx) != tuple(shape):
        raise DataQualityError(
            f"{calibration.wcs_file}: WCS is for a {nx}x{ny} CCD but visit="
            f"{data_id['visit']} ccd={data_id['ccd']} is {shape[1]}x{shape[0]}; rerun the "
            "fit on the ingested CCDs")


class CalibrateExposureTask(_CalibrateTask):
    """Write CALEXPs: CCD images in nJy per pixel with the fitted WCS."""

    name = "calibrateExposure"
    description = ("Apply jointcal/mosaic (or header) calibrations to CCD images: "
                   "CALEXP in nJy per pixel with the fitted WCS")
    ConfigClass = CalibrateConfig

    def run_unit(self, data_id: dict) -> dict:
        """Calibrate one CCD and write its CALEXP; returns a summary dict."""
        row, cal = self._row_and_calibration(data_id)
        exposure = load_exposure(self.repo, row)
        _check_shape(cal, exposure.shape, data_id)
        out = calibrate_exposure(exposure, cal)
        path = self.repo.path("calexp", **_path_id(row, data_id))
        write_exposure(path, out, {**calibration_header(cal), **self.provenance()})
        return {"visit": row["visit"], "ccd": row["ccd"], "source": cal.source,
                "magzp": cal.zero_point, "path": str(path)}


class CalibrateCatalogTask(_CalibrateTask):
    """Write CALSRCs: SRC catalogs with fitted sky coordinates and calibrated fluxes."""

    name = "calibrateCatalog"
    description = ("Apply jointcal/mosaic (or header) calibrations to SRC catalogs: "
                   "CALSRC with fitted RA/Dec and (doApplyCalib) nJy fluxes, AB mags")
    ConfigClass = CalibrateCatalogConfig

    def run_unit(self, data_id: dict) -> dict:
        """Calibrate one CCD's SRC catalog and write its CALSRC; returns a summary."""
        row, cal = self._row_and_calibration(data_id)
        ids = _path_id(row, data_id)
        src_path = self.repo.find("src", **ids)
        if src_path is None:
            raise DataQualityError(
                f"no SRC catalog ({Path(self.repo.path('src', **ids)).name}) in rerun "
                f"{self.repo.rerun} or its inputs; run detectSources.py on this CCD")
        table, header = read_src(src_path)
        wcs = cal.wcs
        if wcs is None:  # header calibration: the CCD's header WCS, as in the SRC header
            wcs = read_wcs(header, source=str(src_path))
        nx, ny = header.get("NX"), header.get("NY")
        if nx and ny:
            _check_shape(cal, (int(ny), int(nx)), data_id)
        out = calibrate_catalog(table, wcs, cal.photo_calib, self.config.doApplyCalib,
                                source=str(src_path))
        extra = {k: v for k, v in calibration_header(cal).items() if k != "BUNIT"}
        extra["FLUXCAL"] = (bool(self.config.doApplyCalib), "nJy fluxes and AB mags added")
        extra["SRCFILE"] = _relative(self.repo, src_path)  # no comment: may be long
        extra.update(self.provenance())
        hdu = src_hdu(out, replace_wcs_keywords(header, wcs), extra)
        path = self.repo.path("calsrc", **ids)
        write_fits_atomic(path, fits.HDUList([fits.PrimaryHDU(), hdu]))
        return {"visit": row["visit"], "ccd": row["ccd"], "source": cal.source,
                "n": len(out), "path": str(path)}


def _path_id(row: dict, data_id: dict) -> dict:
    return {"pointing": row["pointing"] if row["pointing"] is not None else 0,
            "filter": row["filter"], "tract": data_id["tract"], "visit": row["visit"],
            "ccd": row["ccd"]}


def _relative(repo, path) -> str:
    try:
        return str(Path(path).relative_to(repo.root))
    except ValueError:
        return str(path)


def main_exposure() -> None:
    """Entry point of ``calibrateExposure.py``."""
    sys.exit(CalibrateExposureTask.main())


def main_catalog() -> None:
    """Entry point of ``calibrateCatalog.py``."""
    sys.exit(CalibrateCatalogTask.main())
