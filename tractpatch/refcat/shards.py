"""HEALPix sharding of a reference catalog on disk.

A catalog lives in ``ROOT/ref_cats/<name>/``: one FITS file per non-empty HEALPix pixel
(nested ordering, ICRS, ``nside`` from the ingest config), named ``<pixel>.fits`` with one
BinTable HDU ``REFCAT``, plus ``config.yaml`` (the ingest config, the shard scheme, bands,
star count, epoch range and largest proper motion, which the loader uses to grow queries).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import numpy as np
import yaml
from astropy.io import fits
from astropy.table import Table, vstack
from astropy_healpix import HEALPix

from ..atomic import write_fits_atomic, write_text_atomic
from ..errors import UserError

REFCAT_DIR = "ref_cats"
CONFIG_FILE = "config.yaml"
FORMAT_VERSION = 1


def catalog_dir(root, name: str) -> Path:
    """``ROOT/ref_cats/<name>``."""
    return Path(root) / REFCAT_DIR / name


@dataclass(frozen=True)
class ShardScheme:
    """HEALPix nested pixels of ``nside`` on ICRS; one shard file per pixel."""

    nside: int

    @property
    def healpix(self) -> HEALPix:
        return HEALPix(nside=self.nside, order="nested", frame=None)

    def pixels_of(self, ra_rad: np.ndarray, dec_rad: np.ndarray) -> np.ndarray:
        """Pixel index of each position (radians)."""
        return np.asarray(self.healpix.lonlat_to_healpix(np.asarray(ra_rad) * u.rad,
                                                         np.asarray(dec_rad) * u.rad))

    def pixels_in_cone(self, ra_deg: float, dec_deg: float, radius_deg: float) -> np.ndarray:
        """Every pixel that may hold a position within ``radius_deg`` of the centre.

        astropy-healpix's cone search can miss a pixel whose only overlap is a sliver at
        the cone edge, so the cone is grown by one pixel size; the caller cuts exactly.
        """
        hp = self.healpix
        grow = hp.pixel_resolution.to_value(u.deg)
        r = min(radius_deg + grow, 180.0)
        return np.asarray(hp.cone_search_lonlat(ra_deg * u.deg, dec_deg * u.deg, r * u.deg))

    def to_dict(self) -> dict:
        return {"kind": "healpix", "nside": self.nside, "order": "nested", "frame": "icrs",
                "file": "{pixel}.fits"}


def shard_path(cat_dir: Path, pixel: int) -> Path:
    return Path(cat_dir) / f"{int(pixel)}.fits"


def shard_pixels(cat_dir: Path) -> np.ndarray:
    """Pixels of the shard files present in ``cat_dir``."""
    pix = [int(p.stem) for p in Path(cat_dir).glob("*.fits") if p.stem.isdigit()]
    return np.array(sorted(pix), dtype=np.int64)


def write_shards(cat_dir: Path, table: Table, scheme: ShardScheme, header: dict,
                 merge: bool = False) -> int:
    """Write ``table`` split by pixel; with ``merge`` add to existing shards (by id).

    Returns the number of shard files written.
    """
    pix = scheme.pixels_of(table["coord_ra"], table["coord_dec"])
    order = np.argsort(pix, kind="stable")
    table = table[order]
    pix = pix[order]
    starts = np.flatnonzero(np.r_[True, pix[1:] != pix[:-1]])
    ends = np.r_[starts[1:], len(pix)]
    for s, e in zip(starts, ends):
        part = table[s:e]
        path = shard_path(cat_dir, pix[s])
        if merge and path.exists():
            old = read_shard(path)
            part = vstack([old, part], join_type="exact", metadata_conflicts="silent")
            _, first = np.unique(np.asarray(part["id"]), return_index=True)
            part = part[np.sort(first)]
        write_shard(path, part, header)
    return len(starts)


def write_shard(path: Path, table: Table, header: dict) -> None:
    # from a structured array with TUNITn set by hand: ~2x faster than from a Table
    hdu = fits.BinTableHDU(data=table.as_array(), name="REFCAT")
    for i, c in enumerate(table.colnames, 1):
        if table[c].unit is not None:
            hdu.header[f"TUNIT{i}"] = table[c].unit.to_string("fits")
    for k, v in header.items():
        hdu.header[k] = v
    write_fits_atomic(path, fits.HDUList([fits.PrimaryHDU(), hdu]))


def read_shard(path: Path) -> Table:
    """One shard as a Table (cached on path and modification time)."""
    st = os.stat(path)
    return _read_shard_cached(str(path), st.st_mtime_ns, st.st_size).copy(copy_data=False)


@functools.lru_cache(maxsize=128)
def _read_shard_cached(path: str, mtime_ns: int, size: int) -> Table:
    t = Table.read(path, hdu="REFCAT", character_as_bytes=False)
    t.meta.clear()
    return t


def read_catalog_config(root, name: str) -> dict:
    """The parsed ``config.yaml`` of catalog ``name``; one-line error when missing."""
    d = catalog_dir(root, name)
    path = d / CONFIG_FILE
    if not path.exists():
        from .loader import available_refcats

        have = ", ".join(available_refcats(root)) or "none"
        raise UserError(f"no reference catalog {name!r} in {Path(root) / REFCAT_DIR} "
                        f"(available: {have}); ingest one with ingestReferenceCatalog.py "
                        "or fetch one with fetchReferenceCatalog.py")
    info = yaml.safe_load(path.read_text()) or {}
    if info.get("shard_scheme", {}).get("kind") != "healpix":
        raise UserError(f"{path}: not a tractpatch reference catalog config (no HEALPix "
                        "shard_scheme); re-ingest it with ingestReferenceCatalog.py")
    return info


def write_catalog_config(cat_dir: Path, info: dict) -> None:
    write_text_atomic(Path(cat_dir) / CONFIG_FILE, yaml.safe_dump(info, sort_keys=False))
