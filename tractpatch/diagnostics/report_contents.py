"""Gather what a rerun holds for the report: stages, fits, coadds, pictures.

Everything is read from the repository layout (``tractpatch.repo.repository.TEMPLATES``)
and the registry; nothing is recomputed except coadd thumbnails.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class StageSummary:
    """Ledger totals of one task in a rerun."""

    task: str
    units: int = 0
    done: int = 0
    flagged: int = 0
    faulted: int = 0
    pending: int = 0
    seconds: float = 0.0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (data ID, reason)


def stage_summaries(repo) -> list[StageSummary]:
    """One :class:`StageSummary` per task that ran in the rerun, in ledger order."""
    out: dict[str, StageSummary] = {}
    for row in repo.registry.ledger_rows(repo.rerun):
        s = out.setdefault(row["task"], StageSummary(row["task"]))
        s.units += 1
        ident = " ".join(f"{k}={v}" for k, v in row["data_id"].items())
        if row["state"] == "done" and row["quality"]:
            s.flagged += 1
            s.problems.append((ident, row["quality"]))
        elif row["state"] == "done":
            s.done += 1
        elif row["faults"]:
            s.faulted += 1
            s.problems.append((ident, row["message"] or "fault"))
        else:
            s.pending += 1
        if row["started"] and row["finished"]:
            s.seconds += max(0.0, row["finished"] - row["started"])
    return list(out.values())


def fit_results(repo, solver: str = "jointcal", max_visits: int = 2) -> list[dict]:
    """Metrics and diagnostic pictures of every jointcal (or mosaic) fit in the rerun.

    Returns dicts with ``tract``, ``filter``, ``metrics`` (the YAML mapping),
    ``pictures`` (the global PNGs and those of ``max_visits`` visits) and ``index`` (the
    diagnostics folder's index.html, or None).
    """
    base = repo.rerun_dir / f"{solver}-results"
    out = []
    for mfile in sorted(base.glob(f"*/{solver}_metrics-*.yaml")):
        tract = mfile.parent.name
        filt = mfile.stem.split("-", 1)[1]
        diag = mfile.parent / f"diagnostics-{filt}"
        pics = _pictures(diag, max_visits) if diag.is_dir() else []
        index = diag / "index.html"
        out.append(dict(tract=tract, filter=filt,
                        metrics=yaml.safe_load(mfile.read_text()) or {}, pictures=pics,
                        index=index if index.exists() else None))
    return out


def _pictures(diag: Path, max_visits: int) -> list[Path]:
    """The global diagnostics PNGs, then the per-visit ones (``*_<visit>.png``) of the
    first ``max_visits`` visits; the folder's own index.html shows them all."""
    pngs = sorted(diag.glob("*.png"))
    per_visit = [p for p in pngs if "_" in p.stem and p.stem.rsplit("_", 1)[1].isdigit()]
    visits = sorted({p.stem.rsplit("_", 1)[1] for p in per_visit}, key=int)[:max_visits]
    shown = [p for p in per_visit if p.stem.rsplit("_", 1)[1] in visits]
    return [p for p in pngs if p not in per_visit] + shown


def tract_maps(repo) -> list[Path]:
    """The tract pictures written by makeDiscreteSkyMap."""
    return sorted((repo.rerun_dir / "deepCoadd").glob("skyMap-tract*.png"))


def coadd_files(repo) -> list[dict]:
    """Every coadd patch: ``filter``, ``tract``, ``patch``, ``path``."""
    out = []
    for p in sorted(glob.glob(str(repo.rerun_dir / "deepCoadd" / "*" / "*" / "*.fits"))):
        p = Path(p)
        out.append(dict(filter=p.parent.parent.name, tract=p.parent.name, patch=p.stem,
                        path=p))
    return out


def color_images(repo) -> list[Path]:
    """RGB pictures written by makeColorImage (any PNG under deepCoadd/ named color*)."""
    return sorted((repo.rerun_dir / "deepCoadd").rglob("color*.png"))


def accuracy(repo) -> dict | None:
    """The accuracy-against-truth summary (``report/accuracy.yaml``) if it was scored."""
    p = repo.rerun_dir / "report" / "accuracy.yaml"
    return yaml.safe_load(p.read_text()) if p.exists() else None
