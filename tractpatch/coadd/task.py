"""``coaddDriver.py``: warp calibrated CCDs (CALEXPs) onto patches and stack them.

::

    coaddDriver.py ROOT --rerun R --id tract=0 filter=HSC-I [patch=4,5^4,6] \\
        [--selectId visit=1000..1010:2 ccd=0..3] [-j N] [--cluster ADDRESS]

One unit of work is one patch. Without ``patch`` in ``--id``, every patch of the tract
that a selected CCD overlaps is coadded. ``--selectId`` chooses the input CCDs (default:
every CCD of the filter in the registry); a CCD without a CALEXP in the rerun chain, or
with an unreadable one, is skipped with one logged line and the patch goes on.

Output ``deepCoadd/<filter>/<tract>/<x>,<y>.fits``: IMAGE, MASK, VARIANCE (patch outer
WCS; FLUXMAG0, MAGZERO), NIMAGE, EXPTIME, INPUTS (visit, ccd, weight, goodPix,
calibSource); optional per-visit warps ``deepCoadd/<filter>/<tract>/<x>,<y>/warp-<visit>``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..atomic import write_fits_atomic
from ..cli import CmdLineTask
from ..errors import DataQualityError, UserError
from ..image import read_exposure, wcs_to_header
from .assemble import CoaddResult, coadd_patch
from .config import CoaddDriverConfig


class CoaddDriverTask(CmdLineTask):
    """Make deep coadds of patches from CALEXPs."""

    name = "coaddDriver"
    description = ("Warp calibrated CCDs onto tract patches (Lanczos, coarse-grid "
                   "transform) and stack them (MEANCLIP/MEAN/MEDIAN) into deepCoadds")
    ConfigClass = CoaddDriverConfig
    level = "patch"

    # --- units ----------------------------------------------------------------------
    def units(self, ids, select) -> list[dict]:
        """One unit per (tract, filter, patch); see the module docstring."""
        from ..skymap import load_skymap

        if not ids:
            raise UserError("coaddDriver needs --id tract=N filter=NAME [patch=x,y]")
        skymap = load_skymap(self.repo)
        # the workers need the input selection: it travels in the (picklable) options
        self.options["select_specs"] = list(select or [])
        rows_all = self.repo.registry.exposures(select or None)
        units: dict[tuple, dict] = {}
        matched: set = set()
        for spec in ids:
            missing = [k for k in ("tract", "filter") if k not in spec.terms]
            if missing:
                raise UserError(f"--id {spec}: give {' and '.join(missing)} (a coadd is "
                                "per tract and filter), e.g. --id tract=0 filter=HSC-I")
            for tract_id in spec.terms["tract"]:
                tract = _tract(skymap, tract_id)
                for filt in spec.terms["filter"]:
                    rows = [r for r in rows_all if r["filter"] == filt]
                    if (self.config.background_method == "match" and rows
                            and not self.options.get("show")
                            and (tract_id, filt) not in matched):
                        matched.add((tract_id, filt))
                        self._match_backgrounds(tract, filt, rows)
                    for name in self._patch_names(tract, spec, rows):
                        units.setdefault((tract_id, filt, name),
                                         {"tract": int(tract_id), "filter": filt,
                                          "patch": name})
        return list(units.values())

    # --- background matching (once per tract and filter, in the parent) ------------
    def _offsets_path(self, tract_id, filt) -> Path:
        return self.repo.path("deepCoadd_backgroundOffsets", filter=filt,
                              tract=int(tract_id))

    def _match_backgrounds(self, tract, filt, rows) -> None:
        """Measure the constant offsets of every CALEXP of ``filt`` overlapping ``tract``
        and write them to ``deepCoadd/<filter>/<tract>/backgroundOffsets.yaml``."""
        import yaml

        from ..atomic import write_text_atomic
        from ..skymap.selection import ccd_polygon
        from .background_match import match_backgrounds

        rows = [r for r in rows if tract.patches_overlapping(*ccd_polygon(r))]
        skipped: list[str] = []
        exps = list(self._read_calexps(rows, tract.tract_id, skipped))
        bits = exps[0].mask_planes.bitmask(*self.config.badMaskPlanes) if exps else 0
        b = tract.bbox
        res = match_backgrounds(exps, tract.wcs, (b.x0, b.y0, b.x1, b.y1),
                                bin_size=self.config.backgroundMatchBin, bad_bits=bits,
                                sigma=self.config.backgroundMatchSigma,
                                min_pixels=self.config.backgroundMatchMinPixels)
        doc = {"tract": int(tract.tract_id), "filter": filt, "units": "nJy per pixel",
               "meaning": "subtracted from each CALEXP before warping; mean 0 per "
                          "connected group of overlapping CCDs",
               "binSize": self.config.backgroundMatchBin, "nPairs": len(res.pairs),
               "rmsResidual": res.rms_residual,
               "offsets": [{"visit": k[0], "ccd": k[1], "offset": v}
                           for k, v in sorted(res.offsets.items())]}
        path = self._offsets_path(tract.tract_id, filt)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, yaml.safe_dump(doc, sort_keys=False))
        self.log.info("tract=%s filter=%s: background offsets of %d CCDs from %d "
                      "overlaps (rms residual %.4g) -> %s", tract.tract_id, filt,
                      len(res.offsets), len(res.pairs), res.rms_residual, path)

    def _load_offsets(self, tract_id, filt) -> dict:
        import yaml

        path = self._offsets_path(tract_id, filt)
        if not path.exists():
            raise UserError(f"{path}: no background offsets for tract={tract_id} "
                            f"filter={filt}; rerun coaddDriver.py with "
                            "--config backgroundMethod=match (the parent computes them)")
        doc = yaml.safe_load(path.read_text())
        return {(int(o["visit"]), int(o["ccd"])): float(o["offset"])
                for o in doc["offsets"]}

    @staticmethod
    def _patch_names(tract, spec, rows) -> list[str]:
        from ..skymap.selection import ccd_polygon

        if "patch" in spec.terms:
            nx, ny = tract.num_patches
            for name in spec.terms["patch"]:
                x, y = (int(v) for v in name.split(","))
                if not (0 <= x < nx and 0 <= y < ny):
                    raise UserError(f"--id patch={name}: tract {tract.tract_id} has "
                                    f"patches 0..{nx - 1},0..{ny - 1}")
            return list(spec.terms["patch"])
        names = set()
        for r in rows:
            for p in tract.patches_overlapping(*ccd_polygon(r)):
                names.add(p.index)
        return [f"{x},{y}" for x, y in sorted(names, key=lambda t: (t[1], t[0]))]

    # --- one patch ------------------------------------------------------------------
    def run_unit(self, data_id: dict) -> dict:
        """Coadd one patch; returns a summary dict."""
        from ..skymap import load_skymap
        from ..skymap.selection import ccd_polygon

        limit_threads(self.options.get("processes") or 1)
        tract = _tract(load_skymap(self.repo), data_id["tract"])
        px, py = (int(v) for v in data_id["patch"].split(","))
        patch = tract.patch(px, py)
        filt = data_id["filter"]
        select = self.options.get("select_specs") or None
        rows = [r for r in self.repo.registry.exposures(select) if r["filter"] == filt]
        rows = [r for r in rows
                if patch.index in {p.index for p in tract.patches_overlapping(*ccd_polygon(r))}]
        skipped: list[str] = []
        exposures = self._read_calexps(rows, data_id["tract"], skipped)
        method = self.config.background_method
        if method == "match":
            exposures = _apply_offsets(exposures,
                                       self._load_offsets(data_id["tract"], filt))
        # assemble subtracts the sky when doSubtractBackground: only for 'subtract'
        config = self.config.model_copy(
            update={"doSubtractBackground": method == "subtract"})
        warp_dir = None
        writer = None
        if self.config.doWriteWarps:
            writer = self._warp_writer(data_id, patch)
        if self.repo.rerun is not None:
            warp_dir = self.repo.rerun_dir
            warp_dir.mkdir(parents=True, exist_ok=True)
        res = coadd_patch(exposures, patch.outer_wcs, patch.outer_shape, config,
                          workdir=warp_dir, on_visit_warp=writer)
        ident = f"tract={data_id['tract']} filter={filt} patch={data_id['patch']}"
        if res is None:
            why = f"; skipped: {'; '.join(skipped)}" if skipped else ""
            raise DataQualityError(f"{ident}: no selected CALEXP has good pixels on this "
                                   f"patch{why}")
        path = self.repo.path("deepCoadd", filter=filt, tract=data_id["tract"],
                              patch=data_id["patch"])
        write_coadd(path, res, patch.outer_wcs, self._header(data_id, res, skipped))
        self.log.info("%s: %d CCDs of %d visits -> %s", ident, len(res.inputs),
                      len({r["visit"] for r in res.inputs}), path)
        return {"path": str(path), "inputs": len(res.inputs), "skipped": len(skipped)}

    def _read_calexps(self, rows, tract_id, skipped):
        """Yield the CALEXPs of ``rows`` one at a time; missing/unreadable ones skipped."""
        for r in rows:
            ids = dict(pointing=r["pointing"] if r["pointing"] is not None else 0,
                       filter=r["filter"], tract=tract_id, visit=r["visit"], ccd=r["ccd"])
            path = self.repo.find(self.config.calexpDataset, **ids)
            tag = f"visit={r['visit']} ccd={r['ccd']}"
            if path is None:
                msg = f"{tag}: no CALEXP for tract {tract_id} (run calibrateExposure.py)"
                self.log.info("skipping %s", msg)
                skipped.append(msg)
                continue
            try:
                exp = read_exposure(path)
            except UserError as exc:
                self.log.warning("skipping %s: %s", tag, exc)
                skipped.append(f"{tag}: {exc}")
                continue
            if exp.wcs is None:
                skipped.append(f"{tag}: {path} has no WCS")
                self.log.warning("skipping %s: %s has no WCS; recalibrate it", tag, path)
                continue
            if exp.info.visit is None:
                exp.info.visit, exp.info.ccd = r["visit"], r["ccd"]
            if exp.info.exptime is None:
                exp.info.exptime = r.get("expTime")
            yield exp

    def _warp_writer(self, data_id, patch):
        def write(visit, img, var, msk, bbox):
            x0, y0, x1, y1 = bbox
            wcs = patch.outer_wcs.slice((slice(y0, y1), slice(x0, x1)))
            h = wcs_to_header(wcs)
            prim = fits.PrimaryHDU()
            prim.header.update({"VISIT": visit, "TRACT": data_id["tract"],
                                "PATCH": data_id["patch"], "FILTER": data_id["filter"],
                                "BBOX_X0": x0, "BBOX_Y0": y0,
                                "MAGZERO": self.config.zeroPoint,
                                **{k: v for k, v in self.provenance().items()}})
            hdus = [prim]
            for name, data in (("IMAGE", img), ("MASK", msk), ("VARIANCE", var)):
                hdu = fits.ImageHDU(data, name=name)
                hdu.header.update(h)
                hdus.append(hdu)
            write_fits_atomic(self.repo.path("deepCoadd_warp", filter=data_id["filter"],
                                             tract=data_id["tract"],
                                             patch=data_id["patch"], visit=visit),
                              fits.HDUList(hdus))
        return write

    def _header(self, data_id, res: CoaddResult, skipped) -> dict:
        srcs = res.calib_sources
        h = {
            "TRACT": data_id["tract"], "PATCH": data_id["patch"],
            "FILTER": data_id["filter"],
            "MAGZERO": (res.zero_point, "AB mag of a pixel value of 1"),
            "FLUXMAG0": (10 ** (0.4 * res.zero_point), "pixel value of a 0 mag AB source"),
            "BUNIT": (f"AB ZP {res.zero_point:g}", "flux per pixel at zero point MAGZERO"),
            "CALIBSRC": (srcs[0] if len(srcs) == 1 else
                         ("mixed:" + ",".join(srcs) if srcs else "unknown"),
                         "calibration of the inputs (CALEXP CALIBSRC)"),
            "NINPUTS": (len(res.inputs), "input CCDs"),
            "NVISITS": (len({r["visit"] for r in res.inputs}), "input visits"),
            "NSKIPPED": (len(skipped), "selected CCDs without a usable CALEXP"),
            "STATISTC": (self.config.statistic, "stacking statistic"),
            "BKGMETH": (self.config.background_method, "sky: subtract, match or none"),
            "WARPMETH": self.config.warpingMethod,
            "WARPKERN": self.config.warpingKernel,
            "INTERPL": (self.config.interpLength, "coarse-grid spacing asked"),
            "WARPERR": (round(res.max_transform_error, 6),
                        "max transform interpolation error [pix]"),
        }
        h.update(self.provenance())
        return h


def _tract(skymap, tract_id):
    try:
        return skymap[int(tract_id)]
    except (KeyError, IndexError) as exc:
        raise UserError(f"--id tract={tract_id}: not in the skymap ({exc}); see "
                        "findTractPatch.py or remake the skymap") from None


def _apply_offsets(exposures, offsets: dict):
    """Subtract each CALEXP's matched background offset (a CCD that had no entry
    when the offsets were measured is left as it is)."""
    for exp in exposures:
        off = offsets.get((int(exp.info.visit), int(exp.info.ccd)), 0.0)
        if off:
            # the image array was just read for us: the file is untouched
            exp.image -= np.float32(off)
        yield exp


def limit_threads(processes: int) -> int:
    """Give each of ``processes`` local workers its share of the CPUs for numba's
    threads (never more than ``NUMBA_NUM_THREADS``): ``-j N`` must not run N times
    ncpu threads that preempt each other inside the parallel loops. Returns the count."""
    import numba

    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        ncpu = os.cpu_count() or 1
    n = max(1, min(numba.config.NUMBA_NUM_THREADS, ncpu // max(1, int(processes))))
    numba.set_num_threads(n)
    return n


def write_coadd(path, res: CoaddResult, wcs, header: dict) -> None:
    """Write a coadd (IMAGE, MASK, VARIANCE, NIMAGE, EXPTIME, INPUTS) atomically."""
    prim = fits.PrimaryHDU()
    for k, v in header.items():
        prim.header[k if len(k) <= 8 else f"HIERARCH {k}"] = v
    wh = wcs_to_header(wcs)
    hdus = [prim]
    for name, data in (("IMAGE", res.image), ("MASK", res.mask),
                       ("VARIANCE", res.variance), ("NIMAGE", res.nimage),
                       ("EXPTIME", res.exptime)):
        hdu = fits.ImageHDU(data, name=name)
        hdu.header.update(wh)
        if name == "MASK":
            res.mask_planes.to_header(hdu.header)
        if name == "IMAGE":
            hdu.header["MAGZERO"] = res.zero_point
            hdu.header["FLUXMAG0"] = 10 ** (0.4 * res.zero_point)
            if res.artifact_pixels:  # only when artefact rejection ran
                hdu.header["NARTREJ"] = (int(sum(res.artifact_pixels.values())),
                                         "input pixels masked REJECTED as artefacts")
        if name == "EXPTIME":
            hdu.header["BUNIT"] = "s"
        hdus.append(hdu)
    t = Table(rows=[(r["visit"], r["ccd"], r["weight"], r["goodPix"], r["calibSource"])
                    for r in res.inputs],
              names=("visit", "ccd", "weight", "goodPix", "calibSource"),
              dtype=(np.int64, np.int32, np.float64, np.int64, "U16"))
    t["goodPix"].unit = "pix"
    ih = fits.table_to_hdu(t)
    ih.name = "INPUTS"
    hdus.append(ih)
    write_fits_atomic(path, fits.HDUList(hdus))


def main() -> None:
    """Entry point of ``coaddDriver.py``."""
    sys.exit(CoaddDriverTask.main())
