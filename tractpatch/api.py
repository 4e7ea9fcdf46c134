"""The Python API for notebooks: every stage without the command line.

Example::

    from tractpatch import api

    api.run("makeDemoRepo", "demo-repo", preset="tiny")          # simulated survey
    api.run("detectSources", "demo-repo", rerun="nb", id="filter=HSC-R", processes=2)
    api.run("makeDiscreteSkyMap", "demo-repo", rerun="nb", id="filter=HSC-R")
    api.run("jointcal", "demo-repo", rerun="nb", id="filter=HSC-R tract=0",
            config={"astrometryModel": "constrained"})
    repo = api.open_repository("demo-repo", rerun="nb")
    rows = api.select(repo, "filter=HSC-R visit=1000..1006:2")   # registry rows
    src = api.get_catalog(repo, "src", **rows[0])                # astropy Table
    wcs = api.get_wcs(repo, "jointcal_wcs", tract=0, **rows[0])

Tasks run in this process (``processes`` > 1 starts workers); a user error raises
:class:`tractpatch.errors.UserError` instead of printing one line.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from astropy.io import fits
from astropy.table import Table

from .errors import UserError
from .image import Exposure, PhotoCalib, read_exposure, read_wcs
from .repo.dataid import parse_id_args
from .repo.repository import Repository

#: command name → "module:function" taking an argv list (the console scripts' targets)
COMMANDS = {
    "ingestImages": "tractpatch.repo.ingest_task:main",
    "makeDemoRepo": "tractpatch.sim.cli:main",
    "ingestReferenceCatalog": "tractpatch.refcat.tasks:ingest_main",
    "fetchReferenceCatalog": "tractpatch.refcat.tasks:fetch_main",
    "detectSources": "tractpatch.sources.task:DetectSourcesTask",
    "makeDiscreteSkyMap": "tractpatch.skymap.tasks:MakeDiscreteSkyMapTask",
    "makeSkyMap": "tractpatch.skymap.tasks:MakeSkyMapTask",
    "jointcal": "tractpatch.jointcal.task:JointcalTask",
    "calibrateExposure": "tractpatch.calibrate.tasks:CalibrateExposureTask",
    "calibrateCatalog": "tractpatch.calibrate.tasks:CalibrateCatalogTask",
    "coaddDriver": "tractpatch.coadd.task:CoaddDriverTask",
    "makeReport": "tractpatch.diagnostics.report_task:main",
}


@dataclass
class RunSummary:
    """What a task run left in the ledger of its rerun."""

    task: str
    status: int
    done: int = 0
    flagged: int = 0
    faulted: int = 0


def _argv(root, rerun=None, id=None, select_id=None, config=None, processes=1,
          extra=None, **options) -> list[str]:
    argv = [str(root)]
    if rerun:
        argv += ["--rerun", rerun]
    for flag, spec in (("--id", id), ("--selectId", select_id)):
        for s in ([spec] if isinstance(spec, (str, dict)) else spec or []):
            tokens = s.split() if isinstance(s, str) else [f"{k}={v}" for k, v in s.items()]
            argv += [flag, *tokens]
    if config:
        argv += ["--config", *[f"{k}={_yaml_value(v)}" for k, v in config.items()]]
    if processes and processes > 1:
        argv += ["-j", str(processes)]
    for k, v in options.items():
        flag = f"--{k.replace('_', '-')}"
        if v is True:
            argv.append(flag)
        elif v not in (None, False):
            argv += [flag, str(v)]
    return argv + list(extra or [])


def _yaml_value(v) -> str:
    import json

    return json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else str(v)


def run(command: str, root, rerun: str | None = None, **kwargs) -> RunSummary:
    """Run a pipeline command in this process.

    Parameters
    ----------
    command : str
        A key of :data:`COMMANDS` (``"jointcal"``, ``"coaddDriver"``, ...).
    root : str or Path
        Repository root.
    rerun : str, optional
        ``OUT`` or ``IN:OUT``.
    **kwargs
        ``id`` / ``select_id`` (``"visit=1..3 ccd=0"``, a dict, or a list of either for
        several ``--id``), ``config`` (dict), ``processes``, any other long option of
        the command (``preset="tiny"``, ``clobber_config=True``), ``extra`` (argv list).

    Returns
    -------
    RunSummary
        Exit status and the ledger totals of the task in the rerun.
    """
    if command not in COMMANDS:
        raise UserError(f"unknown command {command!r}; one of {', '.join(COMMANDS)}")
    module, _, attr = COMMANDS[command].partition(":")
    target = getattr(importlib.import_module(module), attr)
    argv = _argv(root, rerun, **kwargs) + ["--doraise", "--no-progress"]
    if command in ("makeDemoRepo",):
        argv.remove("--no-progress")
    if isinstance(target, type):
        status = target.main(argv)
    else:
        try:
            target(argv)
            status = 0
        except SystemExit as exc:
            status = int(exc.code or 0)
    summary = RunSummary(command, status)
    if rerun and isinstance(target, type):
        repo = open_repository(root, rerun.rpartition(":")[2])
        for row in repo.registry.ledger_rows(repo.rerun, target.name):
            if row["state"] == "done":
                if row["quality"]:
                    summary.flagged += 1
                else:
                    summary.done += 1
            elif row["faults"]:
                summary.faulted += 1
    return summary


def open_repository(root, rerun: str | None = None) -> Repository:
    """Open an existing repository (and select a rerun to read from)."""
    return Repository(root, rerun=rerun)


def select(repo: Repository, id: str | dict | None = None) -> list[dict]:
    """Registry exposure rows matching a data-ID expression (all rows without one)."""
    if id is None:
        return repo.registry.exposures()
    tokens = id.split() if isinstance(id, str) else [f"{k}={v}" for k, v in id.items()]
    return repo.registry.exposures([parse_id_args(tokens)])


def _find(repo: Repository, dataset: str, data_id: dict):
    path = repo.find(dataset, **data_id)
    if path is None:
        raise UserError(f"{dataset} {data_id}: not found in rerun {repo.rerun} or its "
                        "inputs; run the task that makes it first")
    return path


def get_exposure(repo: Repository, dataset: str, **data_id) -> Exposure:
    """Read an image dataset (``calexp``, ``deepCoadd``, ``deepCoadd_warp``)."""
    return read_exposure(_find(repo, dataset, data_id))


def get_catalog(repo: Repository, dataset: str, **data_id) -> Table:
    """Read a catalog dataset (``src``, ``calsrc``) as an astropy Table."""
    return Table.read(_find(repo, dataset, data_id), hdu=1)


def get_wcs(repo: Repository, dataset: str, **data_id):
    """Read a fitted WCS (``jointcal_wcs``, ``mosaic_wcs``) as an astropy WCS."""
    path = _find(repo, dataset, data_id)
    return read_wcs(fits.getheader(path), source=str(path))


def get_photo_calib(repo: Repository, dataset: str, **data_id) -> PhotoCalib:
    """Read a fitted flux calibration (``jointcal_photoCalib``, ``mosaic_photoCalib``)."""
    return PhotoCalib.read(_find(repo, dataset, data_id))
