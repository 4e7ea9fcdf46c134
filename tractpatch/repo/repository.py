"""The data repository: ROOT with its registry and the hscPipe Gen2 file layout.

Paths are relative to ROOT (reruns under ``ROOT/rerun/<name>/``); see ``TEMPLATES``.
Reads search the output rerun and then its input reruns (``--rerun IN:OUT``); writes
always go to the output rerun, atomically.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import UserError
from .registry import Registry

#: Dataset name → path template inside a rerun (numbers zero-padded as hscPipe does).
TEMPLATES: dict[str, str] = {
    "src": "{pointing:05d}/{filter}/output/SRC-{visit:07d}-{ccd:03d}.fits",
    "jointcal_wcs": "jointcal-results/{tract}/jointcal_wcs-{visit:07d}-{ccd:03d}.fits",
    "jointcal_photoCalib":
        "jointcal-results/{tract}/jointcal_photoCalib-{visit:07d}-{ccd:03d}.fits",
    "jointcal_metrics": "jointcal-results/{tract}/jointcal_metrics-{filter}.yaml",
    "jointcal_diagnostics": "jointcal-results/{tract}/diagnostics-{filter}",
    "mosaic_wcs": "mosaic-results/{tract}/mosaic_wcs-{visit:07d}-{ccd:03d}.fits",
    "mosaic_photoCalib":
        "mosaic-results/{tract}/mosaic_photoCalib-{visit:07d}-{ccd:03d}.fits",
    "mosaic_metrics": "mosaic-results/{tract}/mosaic_metrics-{filter}.yaml",
    "mosaic_diagnostics": "mosaic-results/{tract}/diagnostics-{filter}",
    "calexp": "{pointing:05d}/{filter}/corr/{tract}/CALEXP-{visit:07d}-{ccd:03d}.fits",
    "calsrc": "{pointing:05d}/{filter}/output/{tract}/CALSRC-{visit:07d}-{ccd:03d}.fits",
    "deepCoadd": "deepCoadd/{filter}/{tract}/{patch}.fits",
    "deepCoadd_warp": "deepCoadd/{filter}/{tract}/{patch}/warp-{visit:07d}.fits",
    "deepCoadd_skyMap": "deepCoadd/skyMap.yaml",
    "deepCoadd_backgroundOffsets": "deepCoadd/{filter}/{tract}/backgroundOffsets.yaml",
    "deepCoadd_skyMapPlot": "deepCoadd/skyMap-tract{tract}.png",
    "config": "config/{task}.yaml",
    "report": "report/index.html",
}


def _format(template: str, data_id: dict) -> str:
    try:
        return template.format(**data_id)
    except KeyError as exc:
        raise UserError(f"data ID {data_id} lacks key {exc.args[0]} needed for "
                        f"{template}") from None


class Repository:
    """A data repository.

    Parameters
    ----------
    root : str or Path
        Repository root (must exist).
    rerun : str, optional
        ``OUT`` or ``IN:OUT``.
    registry_url : str, optional
        SQLAlchemy URL; default from ``ROOT/repo.yaml`` (key ``registry``) or
        ``ROOT/registry.sqlite3``.
    create : bool
        Create ROOT if it does not exist (ingest does; other tasks refuse).
    """

    def __init__(self, root, rerun: str | None = None, registry_url: str | None = None,
                 create: bool = False):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            if not create:
                raise UserError(f"{root}: repository root does not exist; create it by "
                                "ingesting images (ingestImages.py ROOT FILES...)")
            self.root.mkdir(parents=True)
        conf = self.root / "repo.yaml"
        if registry_url is None and conf.exists():
            registry_url = (yaml.safe_load(conf.read_text()) or {}).get("registry")
        self.registry = Registry.for_root(self.root, registry_url)
        self.rerun = None
        self.input_reruns: list[str] = []
        if rerun:
            self.set_rerun(rerun)

    def set_rerun(self, spec: str) -> None:
        """Select the output rerun (``OUT`` or ``IN:OUT``) and record it."""
        parent, sep, out = spec.rpartition(":")
        if not out or (sep and not parent):
            raise UserError(f"--rerun {spec}: expected OUT or IN:OUT")
        for name in filter(None, (parent, out)):
            if "/" in name.strip("/") and ".." in name or name.startswith("/"):
                raise UserError(f"--rerun {spec}: rerun names are relative paths")
        self.registry.add_rerun(out, parent or None)
        self.rerun = out
        self.input_reruns = self.registry.rerun_chain(out)[1:]

    @property
    def rerun_dir(self) -> Path:
        """``ROOT/rerun/<output rerun>``."""
        if self.rerun is None:
            raise UserError("this command needs --rerun OUT (or IN:OUT)")
        return self.root / "rerun" / self.rerun

    def path(self, dataset: str, **data_id) -> Path:
        """Path to write ``dataset`` for ``data_id`` in the output rerun."""
        return self.rerun_dir / _format(TEMPLATES[dataset], data_id)

    def find(self, dataset: str, **data_id) -> Path | None:
        """Existing file of ``dataset`` in the output rerun or its inputs, else None."""
        rel = _format(TEMPLATES[dataset], data_id)
        for name in [self.rerun, *self.input_reruns]:
            p = self.root / "rerun" / name / rel
            if p.exists():
                return p
        return None

    def exposure_path(self, row: dict) -> Path:
        """Absolute path of an exposure row's image file."""
        p = Path(row["path"])
        return p if p.is_absolute() else self.root / p

    def companion_path(self, row: dict, kind: str) -> Path | None:
        """Absolute path of an exposure's ``weight`` or ``mask`` companion, or None."""
        p = row.get(f"{kind}_path")
        if not p:
            return None
        p = Path(p)
        return p if p.is_absolute() else self.root / p
