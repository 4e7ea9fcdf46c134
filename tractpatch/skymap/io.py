"""Saving and loading skymaps: ``deepCoadd/skyMap.yaml`` in the rerun (readable YAML)
and the tract/patch tables of the registry (with sky polygons)."""
from __future__ import annotations

import json

import numpy as np
import yaml

from ..atomic import write_text_atomic
from ..errors import UserError
from .base import BaseSkyMap
from .discrete import DiscreteSkyMap, DiscreteSkyMapConfig
from .ps1 import PS1RingsSkyMap, PS1RingsSkyMapConfig
from .rings import RingsSkyMap, RingsSkyMapConfig

FORMAT_VERSION = 1
_KINDS = {"discrete": (DiscreteSkyMap, DiscreteSkyMapConfig),
          "rings": (RingsSkyMap, RingsSkyMapConfig),
          "ps1": (PS1RingsSkyMap, PS1RingsSkyMapConfig)}
#: skymaps with more patches than this record only their tracts in the registry
MAX_REGISTRY_PATCHES = 200_000


def skymap_to_dict(skymap: BaseSkyMap, name: str) -> dict:
    """The YAML document of a skymap: kind, name and full configuration."""
    return {"format": FORMAT_VERSION, "kind": skymap.kind, "name": name,
            "config": json.loads(skymap.config.model_dump_json())}


def skymap_from_dict(doc: dict, where: str = "skyMap.yaml") -> BaseSkyMap:
    """Rebuild a skymap from :func:`skymap_to_dict` output."""
    try:
        cls, cfg_cls = _KINDS[doc["kind"]]
        return cls(cfg_cls.model_validate(doc["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{where}: not a tractpatch skymap ({exc}); remake it with "
                        "makeDiscreteSkyMap.py or makeSkyMap.py") from None


def skymap_name(doc: dict) -> str:
    """The preset or kind name recorded with a skymap."""
    return doc.get("name") or doc.get("kind", "")


def read_skymap_doc(repo) -> tuple[dict, object]:
    """(YAML document, path) of the skymap of the rerun chain; UserError if none."""
    path = repo.find("deepCoadd_skyMap")
    if path is None:
        raise UserError(f"rerun {repo.rerun}: no skymap (deepCoadd/skyMap.yaml) in the "
                        "rerun or its inputs; make one with makeDiscreteSkyMap.py or "
                        "makeSkyMap.py")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc}); remake the skymap") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: not a skymap document; remake the skymap")
    return doc, path


def load_skymap(repo) -> BaseSkyMap:
    """The skymap of ``repo``'s rerun chain (``deepCoadd/skyMap.yaml``).

    ``skymap[tract_id]`` is a :class:`~tractpatch.skymap.tract.TractInfo`; iterating
    gives all tracts.
    """
    doc, path = read_skymap_doc(repo)
    return skymap_from_dict(doc, str(path))


def save_skymap(repo, skymap: BaseSkyMap, name: str) -> None:
    """Write ``deepCoadd/skyMap.yaml`` in the output rerun and record the tracts (and,
    for skymaps of at most :data:`MAX_REGISTRY_PATCHES` patches, the patches) with
    their sky polygons in the registry."""
    doc = skymap_to_dict(skymap, name)
    text = ("# tractpatch skymap: reload with tractpatch.skymap.load_skymap(repo)\n"
            + yaml.safe_dump(doc, sort_keys=False))
    tracts, patches = registry_rows(skymap)
    write_text_atomic(repo.path("deepCoadd_skyMap"), text)
    repo.registry.put_skymap(repo.rerun, name, yaml.safe_dump(doc["config"]),
                             tracts=tracts, patches=patches)


def _polygon_json(ra, dec) -> str:
    return json.dumps([[round(float(r), 8), round(float(d), 8)] for r, d in zip(ra, dec)])


def registry_rows(skymap: BaseSkyMap) -> tuple[list[dict], list[dict]]:
    """Tract rows (centre, patch counts, corner polygon) and patch rows (inner-box
    corner polygons; none for skymaps with too many patches)."""
    ids = skymap.tract_ids()
    tracts = []
    total = 0
    for tid in ids:
        t = skymap[tid]
        corners = t.corners()
        tracts.append(dict(tract=tid, ra=t.center[0], dec=t.center[1],
                           num_patches_x=t.num_patches[0], num_patches_y=t.num_patches[1],
                           polygon=_polygon_json([c[0] for c in corners],
                                                 [c[1] for c in corners])))
        total += len(t)
    patches = []
    if total <= MAX_REGISTRY_PATCHES:
        for tid in ids:
            t = skymap[tid]
            for p in t.patches():
                xy = np.array(p.inner_bbox.float_corners())
                ra, dec = t.pixel_to_sky(xy[:, 0], xy[:, 1])
                patches.append(dict(tract=tid, x=p.index[0], y=p.index[1],
                                    polygon=_polygon_json(ra, dec)))
    if len(skymap) > 2000:
        skymap._cache.clear()  # all-sky maps: do not keep thousands of WCS objects
    return tracts, patches
