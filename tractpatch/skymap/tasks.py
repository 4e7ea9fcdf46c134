"""The skymap commands: makeDiscreteSkyMap.py, makeSkyMap.py and findTractPatch.py."""
from __future__ import annotations

import json
import logging
import math
import sys
from typing import Literal

import numpy as np
import yaml
from pydantic import Field

from ..cli.config import TaskConfig
from ..cli.parser import CommandParser
from ..cli.task import CmdLineTask, simple_main
from ..errors import UserError
from ..repo.dataid import DataIdSpec, parse_id_args
from ..repo.repository import Repository
from .base import MAX_PATCHES_PER_AXIS
from .discrete import DiscreteSkyMap, DiscreteSkyMapConfig
from .io import load_skymap, read_skymap_doc, save_skymap, skymap_to_dict
from .plot import plot_tract
from .ps1 import PS1RingsSkyMap, ps1_rings_v3
from .rings import RingsSkyMap, RingsSkyMapConfig, hsc_rings_v1
from .selection import ccd_polygon
from .sphere import bounding_circle
from .tract import TractInfo


# --- makeDiscreteSkyMap ---------------------------------------------------------------
class MakeDiscreteSkyMapConfig(TaskConfig):
    """makeDiscreteSkyMap.py: one tract around every selected CCD."""

    skyMap: DiscreteSkyMapConfig = Field(default_factory=DiscreteSkyMapConfig,
                                         description="tract and patch geometry")
    borderSize: float = Field(0.0, ge=0, description="extra radius added to the "
                              "bounding circle of the CCDs (deg)")
    doAppend: bool = Field(False, description="add the tract to the discrete skymap "
                           "already in the rerun (configs must match)")
    doPlot: bool = Field(True, description="draw the tract picture "
                         "(deepCoadd/skyMap-tract<N>.png)")
    plotColorBy: Literal["visit", "filter"] = Field("visit", description="colour the "
                                                    "CCD footprints by visit or filter")


def _selection_text(ids: list[DataIdSpec]) -> str:
    return " ".join(f"--id {s}" for s in ids)


class MakeDiscreteSkyMapTask(CmdLineTask):
    """Make (or extend) a discrete skymap whose new tract holds every selected CCD."""

    name = "makeDiscreteSkyMap"
    description = ("Make a discrete skymap: one tract around the bounding circle of the "
                   "selected CCDs (--id field=... filter=...)")
    ConfigClass = MakeDiscreteSkyMapConfig
    level = "none"
    use_ledger = False

    # one unit for the whole selection: the IDs travel in it as JSON
    def units(self, ids, select):
        rows = self._rows(ids)
        self._warn_left_out_filters(ids, rows)
        self.plan(rows, _selection_text(ids))  # validate in the parent: exit 2 on errors
        return [{"selection": json.dumps([s.terms for s in ids])}]

    def run_unit(self, data_id):
        ids = [DataIdSpec(terms) for terms in json.loads(data_id["selection"])]
        rows = self._rows(ids)
        skymap, tract = self.plan(rows, _selection_text(ids))
        save_skymap(self.repo, skymap, "discrete")
        for t in skymap:
            self.log.info("%s", t.describe())
        if self.config.doPlot:
            path = self.repo.path("deepCoadd_skyMapPlot", tract=tract.tract_id)
            plot_tract(tract, rows, path, color_by=self.config.plotColorBy)
            self.log.info("tract %d picture: %s", tract.tract_id, path)
        return tract.tract_id

    # --- steps ------------------------------------------------------------------------
    def _rows(self, ids: list[DataIdSpec]) -> list[dict]:
        if not ids:
            raise UserError("makeDiscreteSkyMap needs --id (e.g. --id field=COSMOS "
                            "filter=HSC-G^HSC-R^HSC-I): select every field and filter "
                            "that will be coadded together")
        rows = self.repo.registry.exposures(ids)
        if not rows:
            raise UserError(f"{_selection_text(ids)} matches no CCD in {self.repo.root}; "
                            "check the keys against the registry (--show data)")
        return rows

    def _warn_left_out_filters(self, ids, rows) -> None:
        chosen = {r["filter"] for r in rows}
        fields = sorted({r["field"] for r in rows if r["field"] is not None})
        for field in fields:
            have = {r["filter"] for r in self.repo.registry.exposures(field=field)}
            missing = sorted(have - chosen)
            if missing:
                self.log.warning(
                    "field %s also has filter(s) %s in the registry, left out by %s: a "
                    "tract made per filter is cut slightly differently and the "
                    "stack/multiband steps then fail; select all filters to be coadded "
                    "together (filter=%s)", field, ", ".join(missing),
                    _selection_text(ids), "^".join(sorted(have)))

    def plan(self, rows: list[dict], selection: str) -> tuple[DiscreteSkyMap, TractInfo]:
        """The skymap this run makes and its new tract; UserError (nothing written)
        when appending is impossible or the tract needs too many patches."""
        ra = np.concatenate([ccd_polygon(r)[0] for r in rows])
        dec = np.concatenate([ccd_polygon(r)[1] for r in rows])
        try:
            cra, cdec, radius = bounding_circle(ra, dec)
        except ValueError:
            raise UserError(f"{selection}: the CCDs span more than a hemisphere; select "
                            "the fields of one tract at a time") from None
        radius += self.config.borderSize
        base = self.config.skyMap.model_copy(update=dict(raList=[], decList=[],
                                                         radiusList=[]))
        old = self._existing()
        if old is not None and self.config.doAppend:
            base = old
            for i, (r, d, rad) in enumerate(zip(old.raList, old.decList, old.radiusList)):
                if max(abs(r - cra), abs(d - cdec), abs(rad - radius)) < 1e-9:
                    # the same selection again: keep the tract instead of a duplicate
                    skymap = DiscreteSkyMap(old)
                    return skymap, skymap[i]
        cfg = DiscreteSkyMapConfig.model_validate(dict(
            base.model_dump(), raList=[*base.raList, cra], decList=[*base.decList, cdec],
            radiusList=[*base.radiusList, radius]))
        skymap = DiscreteSkyMap(cfg)
        tract = skymap[len(cfg.raList) - 1]
        self._check_patch_limit(tract, cra, cdec, radius, selection)
        if old is not None and not self.config.doAppend and \
                skymap_to_dict(skymap, "discrete")["config"] != \
                skymap_to_dict(DiscreteSkyMap(old), "discrete")["config"]:
            raise UserError(f"rerun {self.repo.rerun} already has a skymap with "
                            f"{len(old.raList)} tract(s); use --config doAppend=True to "
                            "add this tract to it, or another --rerun")
        return skymap, tract

    def _existing(self) -> DiscreteSkyMapConfig | None:
        """The discrete skymap config of the output rerun, checked for appending."""
        path = self.repo.path("deepCoadd_skyMap")
        if not path.exists():
            return None
        doc, _ = read_skymap_doc(self.repo)
        if doc.get("kind") != "discrete":
            raise UserError(f"{path}: the rerun holds a {doc.get('kind')} skymap; a "
                            "discrete tract cannot be added to it; use another --rerun")
        old = DiscreteSkyMapConfig.model_validate(doc["config"])
        if self.config.doAppend:
            new = self.config.skyMap.geometry_dict()
            diff = sorted(k for k, v in old.geometry_dict().items() if new.get(k) != v)
            if diff:
                raise UserError(f"{path}: cannot append, the skymap config differs in "
                                f"{', '.join(diff)}; use the same skyMap settings or "
                                "another --rerun")
        return old

    def _check_patch_limit(self, tract, ra, dec, radius, selection) -> None:
        nx, ny = tract.num_patches
        if max(nx, ny) < MAX_PATCHES_PER_AXIS:
            return
        geom = tract.geometry
        # the minimal pixel box of the tract: the same construction with 1-pixel patches
        one = TractInfo.explicit(tract.tract_id, ra, dec, radius,
                                 self.config.skyMap.tractOverlap,
                                 type(geom)(geom.pixel_scale, geom.projection,
                                            geom.rotation, (1, 1), 0))
        need = math.ceil(max(one.num_patches) / (MAX_PATCHES_PER_AXIS - 1))
        w, h = geom.patch_inner_dimensions
        raise UserError(
            f"{selection}: tract {tract.tract_id} would need {nx} x {ny} patches of "
            f"{w}x{h} pixels (radius {radius:.3f} deg), but object IDs allow fewer than "
            f"{MAX_PATCHES_PER_AXIS} per axis; use --config "
            f"skyMap.patchInnerDimensions=[{need},{need}] (the smallest that fits) or "
            "split the fields over several tracts (one run per group of fields with "
            "--config doAppend=True); nothing was written")


# --- makeSkyMap -----------------------------------------------------------------------
class MakeSkyMapConfig(TaskConfig):
    """makeSkyMap.py: an all-sky skymap."""

    name: Literal["hsc_rings_v1", "ps1_rings_v3", "rings"] = Field(
        "hsc_rings_v1", description="preset: hsc_rings_v1 (HSC-SSP tracts), "
        "ps1_rings_v3 (PS1 projection cells/skycells), or rings (the 'rings' settings)")
    version: int | None = Field(None, ge=0, le=1, description="tract numbering "
                                "version of hsc_rings_v1 (0: LSST's original RA=0 "
                                "off-by-one, 1: fixed; default 1)")
    rings: RingsSkyMapConfig = Field(default_factory=RingsSkyMapConfig,
                                     description="settings of name=rings")


def build_named_skymap(config: MakeSkyMapConfig):
    """The skymap a makeSkyMap config describes."""
    if config.name == "hsc_rings_v1":
        return RingsSkyMap(hsc_rings_v1(1 if config.version is None else config.version))
    if config.name == "ps1_rings_v3":
        return PS1RingsSkyMap(ps1_rings_v3())
    return RingsSkyMap(config.rings)


class MakeSkyMapTask(CmdLineTask):
    """Write an all-sky skymap (rings, HSC-SSP or PS1 presets) into the rerun."""

    name = "makeSkyMap"
    description = "Make an all-sky skymap (--config name=hsc_rings_v1|ps1_rings_v3|rings)"
    ConfigClass = MakeSkyMapConfig
    level = "none"
    uses_ids = False
    use_ledger = False

    def units(self, ids, select):
        skymap = build_named_skymap(self.config)
        self._check_existing(skymap)
        return [{"skymap": self.config.name}]

    def _check_existing(self, skymap) -> None:
        path = self.repo.path("deepCoadd_skyMap")
        if path.exists():
            doc = yaml.safe_load(path.read_text()) or {}
            if doc.get("config") != skymap_to_dict(skymap, self.config.name)["config"] \
                    or doc.get("kind") != skymap.kind:
                raise UserError(f"{path}: the rerun already holds a different skymap "
                                f"({doc.get('name', doc.get('kind'))}); use another "
                                "--rerun")

    def run_unit(self, data_id):
        skymap = build_named_skymap(self.config)
        save_skymap(self.repo, skymap, self.config.name)
        first, last = skymap.tract_ids()[0], skymap.tract_ids()[-1]
        self.log.info("sky map %s has %d tracts (%d..%d), saved in %s", self.config.name,
                      len(skymap), first, last, self.repo.path("deepCoadd_skyMap"))
        return len(skymap)


# --- findTractPatch -------------------------------------------------------------------
log_find = logging.getLogger("findTractPatch")


def _find_body(argv) -> int:
    p = CommandParser(prog="findTractPatch.py", description="Which tracts and patches hold "
                "a position (--radec RA DEC) or overlap CCDs (--id visit=... ccd=...)")
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--rerun", required=True, metavar="[IN:]OUT")
    p.add_argument("--registry", metavar="URL")
    p.add_argument("--id", nargs="+", action="append", metavar="KEY=VALUE")
    p.add_argument("--radec", nargs=2, type=float, action="append", metavar=("RA", "DEC"),
                   help="a sky position in degrees (repeatable)")
    p.add_argument("--plot", action="store_true", help="draw the picture of every tract "
                   "found (deepCoadd/skyMap-tract<N>.png)")
    p.add_argument("--color-by", choices=["visit", "filter"], default="visit")
    p.add_argument("--doraise", action="store_true")
    args = p.parse_args(argv)
    if not args.id and not args.radec:
        raise UserError("give --radec RA DEC or --id visit=... ccd=... (see --help)")
    repo = Repository(args.root, registry_url=args.registry)
    repo.set_rerun(args.rerun)
    skymap = load_skymap(repo)
    found: dict[int, list] = {}
    marks = []
    for ra, dec in args.radec or []:
        if not (-90.0 <= dec <= 90.0):
            raise UserError(f"--radec {ra} {dec}: Dec must be within -90..90 deg")
        marks.append((ra % 360.0, dec))
        print(_describe_position(skymap, ra % 360.0, dec, found))
    if args.id:
        specs = [parse_id_args(t) for t in args.id]
        rows = repo.registry.exposures(specs)
        if not rows:
            raise UserError(f"{_selection_text(specs)} matches no CCD in {repo.root}")
        for r in rows:
            hits = skymap.find_tract_patch_list(*ccd_polygon(r))
            text = "; ".join(f"tract {t.tract_id} patches "
                             + " ".join(p.name for p in ps) for t, ps in hits)
            print(f"visit={r['visit']} ccd={r['ccd']}: {text or 'no tract'}")
            for t, _ in hits:
                found.setdefault(t.tract_id, []).append(r)
    if args.plot:
        for tid, rows in sorted(found.items()):
            path = repo.path("deepCoadd_skyMapPlot", tract=tid)
            plot_tract(skymap[tid], rows, path, color_by=args.color_by, marks=marks)
            print(f"tract {tid} picture: {path}")
    return 0


def _describe_position(skymap, ra: float, dec: float, found: dict) -> str:
    parts = []
    for t in skymap.find_tracts(ra, dec):
        parts.append(f"tract {t.tract_id} patch {t.find_patch(ra, dec).name}")
        found.setdefault(t.tract_id, [])
    head = f"RA {ra:.6f} Dec {dec:.6f}:"
    if isinstance(skymap, PS1RingsSkyMap):
        names = skymap.skycell_names([ra], [dec])
        head += f" {names[0] or 'outside the PS1 3pi survey'};"
    elif isinstance(skymap, RingsSkyMap):
        head += f" nearest-centre tract {skymap.find_tract(ra, dec).tract_id};"
    return f"{head} {'; '.join(parts) if parts else 'in no tract of the skymap'}"


def make_discrete_main() -> None:
    """Console entry of makeDiscreteSkyMap.py."""
    sys.exit(MakeDiscreteSkyMapTask.main())


def make_skymap_main() -> None:
    """Console entry of makeSkyMap.py."""
    sys.exit(MakeSkyMapTask.main())


def find_main(argv=None) -> None:
    """Console entry of findTractPatch.py."""
    sys.exit(simple_main("findTractPatch", _find_body, argv))
