"""Which CCDs fall on which tracts and patches (registry sky corners vs tract pixels)."""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from .io import load_skymap


def ccd_polygon(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) arrays of a registry exposure row's four sky corners (deg)."""
    ra = np.array([row[f"ra{i}"] for i in range(1, 5)], dtype=float)
    dec = np.array([row[f"dec{i}"] for i in range(1, 5)], dtype=float)
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        raise UserError(f"visit={row.get('visit')} ccd={row.get('ccd')}: the registry "
                        "has no sky corners (no WCS at ingest); re-ingest with a WCS")
    return ra, dec


def exposures_in_tract(repo, rows: list[dict], tract_id: int, skymap=None) -> list[dict]:
    """The exposure rows whose sky corners overlap tract ``tract_id`` of the rerun's
    skymap (how a ``tract=`` key in a CCD-level ``--id`` is applied)."""
    skymap = skymap if skymap is not None else load_skymap(repo)
    try:
        tract = skymap[tract_id]
    except KeyError as exc:
        raise UserError(f"--id tract={tract_id}: {exc.args[0]}") from None
    return [r for r in rows if tract.overlaps(*ccd_polygon(r))]


def tract_patches_of_row(skymap, row: dict) -> list[tuple]:
    """(tract, [patches]) pairs an exposure row overlaps (patch outer boxes)."""
    return skymap.find_tract_patch_list(*ccd_polygon(row))
