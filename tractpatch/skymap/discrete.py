"""The discrete skymap: one square tract per explicitly listed centre and radius
(LSST ``DiscreteSkyMap``), as made by makeDiscreteSkyMap.py."""
from __future__ import annotations

from pydantic import Field, model_validator

from .base import BaseSkyMap, SkyMapConfig
from .tract import TractInfo


class DiscreteSkyMapConfig(SkyMapConfig):
    """A discrete skymap: tract i is centred at (raList[i], decList[i])."""

    raList: list[float] = Field([], description="tract centre RAs (deg, ICRS)")
    decList: list[float] = Field([], description="tract centre Decs (deg, ICRS)")
    radiusList: list[float] = Field([], description="tract radii (deg)")

    @model_validator(mode="after")
    def _same_lengths(self):
        if not len(self.raList) == len(self.decList) == len(self.radiusList):
            raise ValueError(f"raList, decList and radiusList have different lengths "
                             f"({len(self.raList)}, {len(self.decList)}, "
                             f"{len(self.radiusList)})")
        return self

    def geometry_dict(self) -> dict:
        """The settings that must match to append a tract (all but the tract lists)."""
        d = self.model_dump()
        for k in ("raList", "decList", "radiusList"):
            d.pop(k)
        return d


class DiscreteSkyMap(BaseSkyMap):
    """Square tracts at listed centres; tract IDs 0, 1, ... in list order."""

    kind = "discrete"

    def __init__(self, config: DiscreteSkyMapConfig):
        super().__init__(config)

    def tract_ids(self) -> list[int]:
        return list(range(len(self.config.raList)))

    def _make_tract(self, tract_id: int) -> TractInfo:
        c = self.config
        return TractInfo.explicit(tract_id, c.raList[tract_id], c.decList[tract_id],
                                  c.radiusList[tract_id], c.tractOverlap, self.geometry)
