"""Ingest image files into a repository: read headers, register every CCD.

Modes: ``link`` (symlink under ``ROOT/raw/``; default), ``copy``, ``move`` and
``register`` (record the file where it is). Ingesting a file twice changes nothing.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..image.fits_io import is_tractpatch_mef, merged_header, open_fits
from ..image.wcs_io import pixel_corners_to_sky, read_wcs
from .instrument import Instrument, assigned_visit
from .repository import Repository

log = logging.getLogger("ingestImages")

MODES = ("link", "copy", "move", "register")


@dataclass
class IngestReport:
    """What an ingest did."""

    added: list[dict] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # companions, non-images
    errors: list[str] = field(default_factory=list)  # one line per file that failed


def ccd_hdus(hdul, instrument: Instrument) -> list[int]:
    """Indices of the HDUs that hold one CCD each."""
    if is_tractpatch_mef(hdul):
        return [hdul.index_of("IMAGE")]
    images = [i for i, h in enumerate(hdul)
              if h.is_image and h.header.get("NAXIS", 0) == 2]
    if instrument.hdus == "primary":
        return [0] if 0 in images else []
    if instrument.hdus == "extensions":
        return [i for i in images if i > 0]
    return [0] if 0 in images else images


def _number(value, kind, what: str, src: str):
    """``kind(value)`` (int or float), or a UserError naming the file and the keyword."""
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{src}: {what} {value!r} in the header is not a number; fix the "
                        "header or use an --instrument with the right keywords") from None
    if isinstance(out, float) and not np.isfinite(out):
        raise UserError(f"{src}: {what} {value!r} in the header is not finite; fix the "
                        "header")
    return out


def exposure_row(path: Path, hdul, index: int, instrument: Instrument) -> dict:
    """The registry row of the CCD in HDU ``index`` of an open file."""
    hdu = hdul[index]
    mef = is_tractpatch_mef(hdul)
    header = merged_header(hdul, hdu)
    if mef:  # our MEF: metadata in the primary header, WCS in IMAGE
        header = hdul[0].header.copy()
        header.update(hdu.header)
    src = f"{path}[{index}]" if len(hdul) > 1 else str(path)
    wcs = read_wcs(header, quirks=instrument.quirks, source=src)
    ny, nx = hdu.header["NAXIS2"], hdu.header["NAXIS1"]
    if hdu.header.get("ZNAXIS1"):  # tile-compressed
        ny, nx = hdu.header["ZNAXIS2"], hdu.header["ZNAXIS1"]
    corners = pixel_corners_to_sky(wcs, (ny, nx))
    centre = wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]

    look = lambda key: instrument.lookup(key, header)  # noqa: E731
    visit = look("visit")
    if visit is None:
        visit = assigned_visit(path)
        log.info("%s: no visit keyword; assigned visit %d", path.name, visit)
    ccd = look("ccd")
    if ccd is None:
        ccd = index
    ccdname = look("ccdname")
    raw_filter = look("filter")
    filt = instrument.canonical_filter(raw_filter)
    if raw_filter is None:
        raise UserError(f"{src}: no filter keyword ({', '.join(instrument.keywords.get('filter', []))}); "
                        "use --instrument with the right keywords")
    if filt is None:
        raise UserError(f"{src}: unknown filter {raw_filter!r} for instrument "
                        f"{instrument.name}; known: {', '.join(instrument.filters)}; "
                        "add it to the instrument YAML")
    exptime = look("exptime")
    if exptime is not None:
        exptime = _number(exptime, float, "exposure time", src)
        if not exptime > 0:
            raise UserError(f"{src}: exposure time is {exptime}; a science exposure "
                            "needs EXPTIME > 0 (fix the header or leave the file out)")
    mjd, date_obs = look("mjd"), look("date_obs")
    if mjd is None and date_obs:
        from astropy.time import Time

        try:
            mjd = Time(str(date_obs), scale="utc").mjd
        except ValueError:
            mjd = None
    try:
        visit, ccd = int(visit), int(ccd)
    except (TypeError, ValueError):
        raise UserError(f"{src}: visit {visit!r} / ccd {ccd!r} are not integers; "
                        "use an --instrument whose keywords give numbers") from None
    pointing = look("pointing")
    override = instrument.ccd_override(ccd, ccdname)
    if pointing is not None:
        pointing = _number(pointing, int, "pointing", src)
    if mjd is not None:
        mjd = _number(mjd, float, "MJD", src)
    row = dict(
        instrument=instrument.name, visit=visit, ccd=ccd,
        ccdname=str(ccdname).strip() if ccdname is not None else None,
        filter=filt, field=str(look("field") or "default").strip(),
        pointing=pointing if pointing is not None else 0,
        dateObs=(str(date_obs)[:10] if date_obs else None),
        mjd=float(mjd) if mjd is not None else None, expTime=exptime,
        hdu=str(index), nx=int(nx), ny=int(ny),
        gain=_positive(override.get("gain", look("gain"))),
        saturation=_positive(override.get("saturation", look("saturation"))),
        ra_center=float(np.mod(centre[0], 360)), dec_center=float(centre[1]),
    )
    for i, (ra, dec) in enumerate(corners, start=1):
        row[f"ra{i}"], row[f"dec{i}"] = float(ra), float(dec)
    return row


def _positive(value) -> float | None:
    """A positive finite float, or None (gain and saturation are optional)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def _place(src: Path, repo: Repository, row: dict, mode: str) -> str:
    """Put ``src`` in the repository per ``mode``; returns the path to record."""
    if mode == "register":
        return str(src.resolve())
    dest = (repo.root / "raw" / row["field"] / (row["dateObs"] or "unknown")
            / row["filter"] / src.name)
    rel = str(dest.relative_to(repo.root))
    if dest.exists() or dest.is_symlink():
        same = dest.resolve() == src.resolve() or (
            dest.stat().st_size == src.stat().st_size and mode == "copy")
        if same:
            return rel
        raise UserError(f"{src}: {dest} already exists and is a different file; rename "
                        "one of them")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if mode == "link":
        os.symlink(src.resolve(), dest)
    elif mode == "copy":
        tmp = dest.with_name(f".tmp-{dest.name}")
        shutil.copy2(src, tmp)
        os.replace(tmp, dest)
    elif mode == "move":
        shutil.move(str(src), dest)
    return rel


def ingest_file(repo: Repository, path, instrument: Instrument, mode: str = "link",
                report: IngestReport | None = None) -> IngestReport:
    """Ingest every CCD of one file (and its companions) into ``repo``."""
    report = report or IngestReport()
    path = Path(path)
    if instrument.is_companion(path):
        report.skipped.append(f"{path}: a companion (weight/mask) file")
        return report
    with open_fits(path) as hdul:
        hdus = ccd_hdus(hdul, instrument)
        if not hdus:
            raise UserError(f"{path}: no 2-D image HDU; is this an image file?")
        rows = [exposure_row(path, hdul, i, instrument) for i in hdus]
    companions = instrument.companion_paths(path)
    # Decide everything before placing files, so a failure leaves the repository as is.
    for row in rows:
        existing = repo.registry.exposures(visit=row["visit"], ccd=row["ccd"])
        if existing and Path(existing[0]["path"]).name != path.name:
            raise UserError(f"{path}: visit {row['visit']} ccd {row['ccd']} is already "
                            f"ingested from {existing[0]['path']}; remove one of them or "
                            "fix the visit number")
    placed = _place(path, repo, rows[0], mode)
    comp_placed = {k: (_place(p, repo, rows[0], "link" if mode == "move" else mode)
                       if mode != "move" else _place(p, repo, rows[0], "move"), kind)
                   for k, (p, kind) in companions.items()}
    for row in rows:
        row["path"] = placed
        row["file_size"] = path.stat().st_size if path.exists() else None
        if "weight" in comp_placed or "variance" in comp_placed:
            k = "weight" if "weight" in comp_placed else "variance"
            row["weight_path"], row["weight_kind"] = comp_placed[k]
            row["weight_hdu"] = row["hdu"]
        if "mask" in comp_placed:
            row["mask_path"] = comp_placed["mask"][0]
            row["mask_hdu"] = row["hdu"]
        status = repo.registry.add_exposure(row)
        if status == "same":
            report.already.append(f"{path}[{row['hdu']}] visit={row['visit']} ccd={row['ccd']}")
        else:
            report.added.append(row)
    return report


def ingest_files(repo: Repository, files, instrument: Instrument, mode: str = "link",
                 progress: bool = True) -> IngestReport:
    """Ingest many files; directories are searched for FITS files recursively.

    One unreadable file does not stop the others: its one-line reason is logged and
    collected in ``report.skipped``; the command exits 2 if any file failed.
    """
    from tqdm import tqdm

    if mode not in MODES:
        raise UserError(f"--mode {mode}: use one of {', '.join(MODES)}")
    paths = []
    for f in files:
        p = Path(f)
        if p.is_dir():
            paths.extend(sorted(q for q in p.rglob("*") if q.is_file() and
                                any(s in q.name.lower() for s in (".fits", ".fit", ".fz"))))
        else:
            paths.append(p)
    if not paths:
        raise UserError("no input files given (or the directories hold no FITS files)")
    report = IngestReport()
    for p in tqdm(paths, desc="ingest", unit="file", disable=None if progress else True,
                  leave=False):
        try:
            ingest_file(repo, p, instrument, mode, report)
        except UserError as exc:
            report.errors.append(str(exc))
    return report
