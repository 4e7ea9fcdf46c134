"""What every skymap shares: its configuration, tract lookup and iteration."""
from __future__ import annotations

from typing import Iterator

import numpy as np
from pydantic import Field, field_validator

from ..cli.config import TaskConfig
from .sphere import separation
from .tract import TractGeometry, TractInfo

#: hscPipe/coaddDriver limit: patch indices are packed into 5 bits each, and a tract
#: must have fewer than this many patches along each axis.
MAX_PATCHES_PER_AXIS = 31


class SkyMapConfig(TaskConfig):
    """Pixel-grid parameters common to all skymaps (LSST ``BaseSkyMapConfig``)."""

    pixelScale: float = Field(0.168, gt=0, description="pixel scale (arcsec/pixel)")
    projection: str = Field("TAN", description="FITS projection code of the tract WCS "
                            "(TAN, STG, SIN, ...)")
    rotation: float = Field(0.0, description="rotation of the tract WCS (deg): position "
                            "angle of +y, east of north")
    tractOverlap: float = Field(0.0, ge=0, description="minimum overlap of adjacent "
                                "tracts (deg)")
    patchInnerDimensions: list[int] = Field([4000, 4000], description="inner size of "
                                            "the patches (x, y pixels)")
    patchBorder: int = Field(100, ge=0, description="border of a patch's outer box "
                             "around its inner box (pixels)")

    @field_validator("projection")
    @classmethod
    def _projection_code(cls, v: str) -> str:
        if len(v) != 3 or not v.isalpha():
            raise ValueError("a projection is a 3-letter FITS code such as TAN")
        return v.upper()

    @field_validator("patchInnerDimensions")
    @classmethod
    def _two_positive(cls, v: list[int]) -> list[int]:
        if len(v) != 2 or min(v) <= 0:
            raise ValueError("patchInnerDimensions is two positive integers [nx, ny]")
        return v

    def geometry(self) -> TractGeometry:
        """The tract geometry these settings describe."""
        return TractGeometry(self.pixelScale, self.projection, self.rotation,
                             tuple(self.patchInnerDimensions), self.patchBorder)


class BaseSkyMap:
    """A collection of tracts; ``skymap[tract_id]``, ``len()``, iteration.

    Subclasses set ``kind``, implement :meth:`tract_ids` and :meth:`_make_tract`, and may
    speed up :meth:`find_tract`.
    """

    kind = "base"

    def __init__(self, config: SkyMapConfig):
        self.config = config
        self.geometry = config.geometry()
        self._cache: dict[int, TractInfo] = {}

    # --- to override ------------------------------------------------------------------
    def tract_ids(self) -> list[int]:
        """All tract IDs in order."""
        raise NotImplementedError

    def _make_tract(self, tract_id: int) -> TractInfo:
        raise NotImplementedError

    # --- collection -------------------------------------------------------------------
    def __getitem__(self, tract_id: int) -> TractInfo:
        tract_id = int(tract_id)
        t = self._cache.get(tract_id)
        if t is None:
            if tract_id not in set(self.tract_ids()):
                raise KeyError(f"tract {tract_id} is not in this {self.kind} skymap "
                               f"(tracts {self.describe_ids()})")
            t = self._cache[tract_id] = self._make_tract(tract_id)
        return t

    def __contains__(self, tract_id) -> bool:
        return int(tract_id) in set(self.tract_ids())

    def __iter__(self) -> Iterator[TractInfo]:
        for i in self.tract_ids():
            yield self[i]

    def __len__(self) -> int:
        return len(self.tract_ids())

    def describe_ids(self) -> str:
        """Compact text of the tract IDs (``0..18937``)."""
        ids = self.tract_ids()
        if not ids:
            return "none"
        if ids == list(range(ids[0], ids[-1] + 1)):
            return f"{ids[0]}..{ids[-1]}"
        return ", ".join(map(str, ids))

    # --- lookups ----------------------------------------------------------------------
    def find_tract(self, ra: float, dec: float) -> TractInfo:
        """The tract whose centre is nearest (ra, dec) (LSST ``findTract``)."""
        ids = self.tract_ids()
        centers = np.array([self[i].center for i in ids])
        d = separation(ra, dec, centers[:, 0], centers[:, 1])
        return self[ids[int(np.argmin(d))]]

    def candidate_tracts(self, ra, dec) -> list[TractInfo]:
        """Tracts that might hold any of the points (all of them by default)."""
        return list(self)

    def find_tracts(self, ra: float, dec: float) -> list[TractInfo]:
        """Every tract whose pixels hold (ra, dec)."""
        return [t for t in self.candidate_tracts([ra], [dec]) if t.contains(ra, dec)]

    def find_tract_patch_list(self, ra, dec) -> list[tuple[TractInfo, list]]:
        """(tract, patches) for every tract a sky polygon overlaps (patches by their
        outer boxes) — LSST's ``findTractPatchList``."""
        out = []
        for t in self.candidate_tracts(ra, dec):
            patches = t.patches_overlapping(ra, dec)
            if patches:
                out.append((t, patches))
        return out

    def patch_limit_problems(self) -> list[str]:
        """One text per tract with 31 or more patches along an axis."""
        return [f"tract {t.tract_id} needs {t.num_patches[0]} x {t.num_patches[1]} "
                "patches" for t in self
                if max(t.num_patches) >= MAX_PATCHES_PER_AXIS]
