#!/usr/bin/env python3
"""jointcal vs SCAMP at survey scale: N visits x 104 CCDs, scored on the synthetic truth.

For each size of the ``--visits`` ladder, one synthetic survey is made with the generator
of ``bench_jointcal_scale.py`` (``tractpatch.jointcal.synthetic.make_synthetic``, same
arguments: 13 x 8 CCDs of 2048 x 4176 pixels at 0.168"/pixel, ~300 stars per CCD, the
header WCSs spoiled by a pointing and rotation error per visit, per-CCD gains and a
per-visit focal-plane calibration). The same detections are written

- for SCAMP: one FITS-LDAC catalog per visit (one ``LDAC_IMHEAD`` + ``LDAC_OBJECTS``
  pair per CCD: the header WCS the survey gives jointcal, XWIN/YWIN_IMAGE 1-based,
  ERRA/B/THETAWIN_IMAGE, FLUX_AUTO/FLUXERR_AUTO = the instrumental counts, MAG_AUTO,
  FLAGS ...) and the reference catalog as FITS-LDAC, moved to the mean epoch of the
  visits with the true proper motions (SCAMP applies motions only to its online
  catalogs);
- for jointcal: one SRC catalog per CCD (the columns and header keywords of
  docs/interfaces.md that ``read_src`` uses) and the reference catalog as ``.npz``.

Then, interleaved ``--repeat`` times:

1. ours: a fresh Python process (this file with ``--worker``) doing what ``jointcal.py``
   does for a tract after its repository look-ups: imports, ``read_src_many`` of the SRC
   catalogs (S/N >= 10, stars), ``fit_jointcal`` (the entry ``bench_jointcal_scale.py``
   times; JointcalConfig defaults: constrained models), and the WCS + photoCalib files
   written as ``JointcalTask._write_outputs`` writes them (one AtomicBatch, one sync).
   Not included: the registry look-ups, ``load_region`` of the reference catalog (here a
   ``np.load``), the metrics file. Its time is the process from spawn to the end of
   the writes (the model evaluation for the score afterwards is not counted);
2. ``scamp`` on the visit catalogs with the configuration of ``bench_jointcal_scamp.py``
   (MOSAIC_TYPE LOOSE, STABILITY_TYPE EXPOSURE, DISTORT_DEGREES 3, SOLVE_PHOTOM Y: its
   best accuracy on the simulated survey), ``-NTHREADS`` = ``--threads``. Its time is
   the whole command (reading the LDAC catalogs and the reference catalog, the fit,
   writing the ``.head`` files; no check plots, no XML).

Wall, CPU (user + sys from ``os.wait4`` of that child alone) and peak RSS of each.
Accuracy: on a 10 x 10 grid over every CCD, the RMS (mas) of the fitted pixel -> sky
mapping against the true one (jointcal: its fitted model, as bench_jointcal_scale.py
scores it; its written SIP files are within ``wcsTolerance`` = 1 mas of it, the maximum
deviation is printed. SCAMP: its ``.head`` TPV WCS through astropy/wcslib), median and
worst CCD; and the calibration RMS (mmag) against the true nJy/count: jointcal absolute
and relative (one global offset removed), SCAMP's FLXSCALE relative only (SCAMP's
photometry is relative). SCAMP's model has one flux scale per visit, jointcal's one
constant per CCD x a per-visit polynomial; the best a constant per visit can do on this
truth (which has +-10 % per-CCD gains) is printed too.

The ladder stops after a size where SCAMP fails or its command takes longer than
``--scamp-limit`` seconds (default 300).

    .venv/bin/python benchmarks/bench_jointcal_scamp_scale.py [--visits 5,10,20,30]
        [--stars-per-ccd 300] [--repeat 2] [--threads 2] [--json FILE] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

# as bench_jointcal_scale.py: the Schur products are small GEMMs (BLAS threads cost there)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "2")

_T_IMPORT0 = time.perf_counter()
_C_IMPORT0 = time.process_time()

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

NX, NY, SCALE = 2048, 4176, 0.168
GRID = 10  # scoring grid per CCD axis, as bench_jointcal_scale.py


# ----------------------------------------------------------------------------- worker
def worker(wdir: Path) -> int:
    """What jointcal.py does for one tract after the registry look-ups; timings to
    ``timing.json``, then (untimed) the fitted model on the scoring grids to ``eval.npz``."""
    from tractpatch.atomic import AtomicBatch
    from tractpatch.cli.task import provenance
    from tractpatch.jointcal.config import JointcalConfig
    from tractpatch.jointcal.inputs import Detections, RefCatalog, read_src_many
    from tractpatch.jointcal.outputs import photocalib_from_model, write_wcs
    from tractpatch.jointcal.solver import fit_jointcal

    t_imp, c_imp = time.perf_counter(), time.process_time()
    cfg = JointcalConfig()
    paths = sorted((wdir / "src").glob("SRC-*.fits"))
    got = read_src_many(paths, cfg.minSnr, cfg.requireStar, 1)
    bad = [g for g in got if isinstance(g, str)]
    if bad:
        raise SystemExit(f"unreadable SRC catalogs: {bad[:3]}")
    det = Detections.concatenate([g[0] for g in got])
    images = [g[1] for g in got]
    r = np.load(wdir / "ref.npz")
    ref = RefCatalog(*(r[k] for k in ("ra", "dec", "ra_err", "dec_err", "pm_ra", "pm_dec",
                                      "flux", "flux_err")), float(r["epoch"]))
    t_read, c_read = time.perf_counter(), time.process_time()
    res = fit_jointcal(det, images, ref, cfg)
    t_fit, c_fit = time.perf_counter(), time.process_time()
    out = wdir / "out"
    out.mkdir(exist_ok=True)
    prov = provenance("jointcal", cfg)
    dev = []
    with AtomicBatch() as batch:  # as JointcalTask._write_outputs
        for g, im in enumerate(res.images):
            dev.append(write_wcs(out / f"jointcal_wcs-{im.visit}-{im.ccd}.fits",
                                 lambda x, y, g=g: res.pixel_to_sky(g, x, y), im.nx, im.ny,
                                 prov, cfg.wcsTolerance, cfg.sipOrderMax, cfg.wcsFormat,
                                 batch=batch))
            if res.photo_model is not None:
                order = getattr(res.photo_model, "order", 0)
                pc = photocalib_from_model(lambda x, y, g=g: res.calibration(g, x, y),
                                           im.nx, im.ny, order)
                pc.write(out / f"jointcal_photoCalib-{im.visit}-{im.ccd}.fits",
                         extra_header=prov, batch=batch)
    t_end, c_end = time.perf_counter(), time.process_time()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    timing = {"end_epoch": time.time(), "cpu_total": ru.ru_utime + ru.ru_stime,
              "maxrss_gb": ru.ru_maxrss / 1024 ** 2,
              "imports_s": t_imp - _T_IMPORT0, "imports_cpu": c_imp - _C_IMPORT0,
              "read_s": t_read - t_imp, "read_cpu": c_read - c_imp,
              "fit_s": t_fit - t_read, "fit_cpu": c_fit - c_read,
              "write_s": t_end - t_fit, "write_cpu": c_end - c_fit,
              "n_images": len(res.images), "n_meas": int(res.counts["n_measurements"]),
              "max_wcs_file_dev_mas": float(max(dev)) if dev else None}
    (wdir / "timing.json").write_text(json.dumps(timing))
    x, y = _grid()
    v = np.array([im.visit for im in res.images])
    c = np.array([im.ccd for im in res.images])
    ra = np.empty((len(v), x.size))
    dec, cal = np.empty_like(ra), np.full_like(ra, np.nan)
    for g in range(len(v)):
        ra[g], dec[g] = res.pixel_to_sky(g, x, y)
        if res.photo_model is not None:
            cal[g] = res.calibration(g, x, y)
    np.savez(wdir / "eval.npz", visit=v, ccd=c, ra=ra, dec=dec, cal=cal)
    return 0


def _grid(nx=NX, ny=NY):
    x, y = np.meshgrid(np.linspace(0, nx - 1, GRID), np.linspace(0, ny - 1, GRID))
    return x.ravel(), y.ravel()


# ----------------------------------------------------------------------------- inputs
def make_survey(n_visits, grid, stars_per_ccd, spacing):
    from tractpatch.jointcal.synthetic import make_synthetic

    return make_synthetic(n_visits=n_visits, ccd_grid=grid, nx=NX, ny=NY,
                          pixel_scale=SCALE, stars_per_ccd=stars_per_ccd, dither=120.0,
                          k=1.0e-9, seed=7, visit_spacing_days=spacing)


def _mjd_to_year(mjd):
    return 2000.0 + (np.asarray(mjd, float) - 51544.5) / 365.25


def _image_header(im):
    from astropy.io import fits
    from astropy.time import Time

    h = fits.Header()
    # an image header as source-extractor copies it (SCAMP's parser expects it to
    # start with SIMPLE/BITPIX: without them scamp 2.10 crashes)
    h["SIMPLE"] = True
    h["BITPIX"] = -32
    h["NAXIS"] = 2
    h["NAXIS1"], h["NAXIS2"] = im.nx, im.ny
    h.extend(im.wcs.to_header(), update=True)
    h["MJD-OBS"] = im.mjd
    h["EXPTIME"] = 1.0
    h["GAIN"] = 1.0
    h["AIRMASS"] = 1.0
    h["FILTER"] = "r"
    # SCAMP takes the observation epoch from DATE-OBS/MJD-OBS; EPOCH would be read as
    # an (old-style) EQUINOX and the positions precessed
    h["DATE-OBS"] = Time(im.mjd, format="mjd").isot
    h["EQUINOX"] = 2000.0
    h["RADESYS"] = "ICRS"
    return h


def write_scamp_inputs(det, images, ref, d: Path) -> None:
    """One FITS-LDAC catalog per visit (an extension pair per CCD) and ``ref.cat``."""
    from astropy.table import Table
    from ldac import write_ldac_padded as write_ldac

    d.mkdir(parents=True, exist_ok=True)
    order = np.lexsort((det.ccd, det.visit))
    key = det.visit[order] * 10000 + det.ccd[order]
    blocks: dict[int, list] = {}
    for im in images:
        k = im.visit * 10000 + im.ccd
        lo, hi = np.searchsorted(key, [k, k + 1])
        s = order[lo:hi]
        n = len(s)
        flux, ferr = det.flux[s], det.flux_err[s]
        with np.errstate(invalid="ignore", divide="ignore"):
            mag = np.where(flux > 0, 25.0 - 2.5 * np.log10(flux), 99.0)
            magerr = np.where(flux > 0, 1.0857 * ferr / flux, 99.0)
        ra, dec = im.wcs.wcs_pix2world(det.x[s], det.y[s], 0)
        t = Table()
        t["XWIN_IMAGE"] = det.x[s] + 1.0  # FITS convention: first pixel centre is 1
        t["YWIN_IMAGE"] = det.y[s] + 1.0
        t["ERRAWIN_IMAGE"] = np.maximum(det.x_err[s], det.y_err[s]).astype(np.float32)
        t["ERRBWIN_IMAGE"] = np.minimum(det.x_err[s], det.y_err[s]).astype(np.float32)
        t["ERRTHETAWIN_IMAGE"] = np.zeros(n, np.float32)
        t["X_WORLD"], t["Y_WORLD"] = ra, dec
        t["FLUX_AUTO"] = flux.astype(np.float32)
        t["FLUXERR_AUTO"] = ferr.astype(np.float32)
        t["MAG_AUTO"] = mag.astype(np.float32)
        t["MAGERR_AUTO"] = magerr.astype(np.float32)
        t["FLUX_RADIUS"] = np.full(n, 2.5, np.float32)
        t["ELONGATION"] = np.ones(n, np.float32)
        t["FLAGS"] = np.zeros(n, np.int16)
        blocks.setdefault(im.visit, []).append((_image_header(im), t))
    for v, b in blocks.items():
        write_ldac(d / f"v{v}.cat", b)
    # the reference catalog at the mean epoch of the visits (true motions)
    epoch = float(np.mean([im.mjd for im in images]))
    dt = (epoch - ref.epoch_mjd) / 365.25
    dec = ref.dec + ref.pm_dec * dt / 3.6e6
    ra = np.mod(ref.ra + ref.pm_ra * dt / 3.6e6 / np.cos(np.radians(ref.dec)), 360)
    n = len(ref.ra)
    t = Table()
    t["X_WORLD"], t["Y_WORLD"] = ra, dec
    t["ERRA_WORLD"] = np.maximum(ref.ra_err, ref.dec_err) / 3.6e6
    t["ERRB_WORLD"] = np.minimum(ref.ra_err, ref.dec_err) / 3.6e6
    t["ERRTHETA_WORLD"] = np.zeros(n, np.float32)
    t["MAG"] = (31.4 - 2.5 * np.log10(ref.flux)).astype(np.float32)
    t["MAGERR"] = (1.0857 * ref.flux_err / ref.flux).astype(np.float32)
    t["PMALPHA_J2000"] = ref.pm_ra.astype(np.float32)
    t["PMDELTA_J2000"] = ref.pm_dec.astype(np.float32)
    t["PMALPHAERR_J2000"] = np.full(n, 0.1, np.float32)
    t["PMDELTAERR_J2000"] = np.full(n, 0.1, np.float32)
    t["OBSDATE"] = np.full(n, float(_mjd_to_year(epoch)))
    t["FLAGS"] = np.zeros(n, np.int16)
    from astropy.io import fits

    hdr = fits.Header()
    hdr["NAXIS"] = 2
    hdr["NAXIS1"], hdr["NAXIS2"] = 1, 1
    write_ldac(d / "ref.cat", [(hdr, t)])


def write_jointcal_inputs(det, images, ref, d: Path) -> None:
    """One SRC catalog per CCD (docs/interfaces.md columns read_src uses) + ref.npz."""
    from astropy.io import fits

    (d / "src").mkdir(parents=True, exist_ok=True)
    order = np.lexsort((det.ccd, det.visit))
    key = det.visit[order] * 10000 + det.ccd[order]
    for im in images:
        k = im.visit * 10000 + im.ccd
        lo, hi = np.searchsorted(key, [k, k + 1])
        s = order[lo:hi]
        n = len(s)
        cols = [fits.Column(name=nm, format="D", array=a[s]) for nm, a in (
            ("x", det.x), ("y", det.y), ("x_err", det.x_err), ("y_err", det.y_err),
            ("flux_psf", det.flux), ("flux_psf_err", det.flux_err))]
        cols += [fits.Column(name="flags", format="J", array=np.zeros(n, np.int32)),
                 fits.Column(name="is_star", format="L", array=np.ones(n, bool))]
        hdu = fits.BinTableHDU.from_columns(cols)
        hdu.header["EXTNAME"] = "SOURCES"
        hdu.header.extend(im.wcs.to_header(), update=True)
        for kw, val in (("VISIT", im.visit), ("CCD", im.ccd), ("NX", im.nx),
                        ("NY", im.ny), ("MJD-OBS", im.mjd), ("FILTER", "r")):
            hdu.header[kw] = val
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(
            d / "src" / f"SRC-{im.visit:04d}-{im.ccd:03d}.fits", overwrite=True)
    np.savez(d / "ref.npz", ra=ref.ra, dec=ref.dec, ra_err=ref.ra_err, dec_err=ref.dec_err,
             pm_ra=ref.pm_ra, pm_dec=ref.pm_dec, flux=ref.flux, flux_err=ref.flux_err,
             epoch=ref.epoch_mjd)


# ----------------------------------------------------------------------------- runs
def _wait(proc, limit):
    """``(rc, rusage, wall)`` of ``proc`` via wait4 (this child alone); killed after
    ``limit`` s (rc None)."""
    t0 = time.perf_counter()
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru, time.perf_counter() - t0
        if time.perf_counter() - t0 > limit:
            proc.send_signal(signal.SIGKILL)
            _, status, ru = os.wait4(proc.pid, 0)
            return None, ru, time.perf_counter() - t0
        time.sleep(0.02)


def run_ours(d: Path, limit: float) -> dict:
    for p in ("out", "timing.json", "eval.npz"):
        shutil.rmtree(d / p, ignore_errors=True) if (d / p).is_dir() else \
            (d / p).unlink(missing_ok=True)
    log = open(d / "worker.log", "w")
    t_start = time.time()
    proc = subprocess.Popen([sys.executable, __file__, "--worker", str(d)], stdout=log,
                            stderr=subprocess.STDOUT)
    rc, ru, _ = _wait(proc, limit)
    log.close()
    if rc != 0 or not (d / "timing.json").exists():
        tail = (d / "worker.log").read_text()[-2000:]
        return {"error": f"jointcal worker rc {rc}:\n{tail}"}
    t = json.loads((d / "timing.json").read_text())
    t["wall"] = t["end_epoch"] - t_start
    t["cpu"] = t["cpu_total"]
    return t


def scamp_cmd(d: Path, threads: int, stability: str = "EXPOSURE") -> list[str]:
    from bench_jointcal_scamp import scamp_options

    cats = sorted(p.name for p in d.glob("v*.cat"))
    return [shutil.which("scamp"), *cats, "-c", "/dev/null",
            *scamp_options("LOOSE", 3, threads, stability)]


def run_scamp(d: Path, threads: int, limit: float, stability: str = "EXPOSURE") -> dict:
    for h in d.glob("*.head"):
        h.unlink()
    log = open(d / "scamp.log", "w")
    proc = subprocess.Popen(scamp_cmd(d, threads, stability), cwd=d, stdout=log,
                            stderr=subprocess.STDOUT)
    rc, ru, wall = _wait(proc, limit)
    log.close()
    out = {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime,
           "maxrss_gb": ru.ru_maxrss / 1024 ** 2, "rc": rc}
    if rc is None:
        out["error"] = f"scamp killed after {limit:.0f} s"
    elif rc != 0:
        out["error"] = f"scamp rc {rc}: " + (d / "scamp.log").read_text()[-1500:]
    return out


# ----------------------------------------------------------------------------- scoring
def _sep_mas(ra, dec, tra, tdec):
    return np.hypot((ra - tra) * np.cos(np.radians(tdec)), dec - tdec) * 3.6e6


def score(visits, ccds, ra, dec, cal, truth) -> dict:
    """Per-CCD RMS astrometry (mas) and calibration (mmag) against the truth on the
    grids; ``cal`` is nJy/count up to a global factor when ``relative`` only."""
    x, y = _grid()
    mas, dm = [], []
    for i, (v, c) in enumerate(zip(visits, ccds)):
        tra, tdec = truth.pixel_to_sky(v, c, x, y)
        mas.append(np.sqrt(np.mean(_sep_mas(ra[i], dec[i], tra, tdec) ** 2)))
        dm.append(2.5e3 * np.log10(cal[i] / truth.calibration(v, c, x, y)))
    mas, dm = np.array(mas), np.array(dm)
    out = {"n_ccds": len(mas), "wcs_median_mas": float(np.median(mas)),
           "wcs_worst_mas": float(np.max(mas)), "wcs_rms_mas": float(np.sqrt(np.mean(mas ** 2)))}
    if np.isfinite(dm).all():
        off = float(np.mean(dm))
        out["calib_abs_mmag"] = float(np.sqrt(np.mean(dm ** 2)))
        out["calib_offset_mmag"] = off
        out["calib_rel_mmag"] = float(np.sqrt(np.mean((dm - off) ** 2)))
    return out


def score_ours(d: Path, truth) -> dict:
    e = np.load(d / "eval.npz")
    return score(e["visit"], e["ccd"], e["ra"], e["dec"], e["cal"], truth)


def score_scamp(d: Path, images, truth) -> dict:
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning
    from ldac import read_head_file

    x, y = _grid()
    by_visit: dict[int, list] = {}
    for im in images:  # write order = extension order
        by_visit.setdefault(im.visit, []).append(im.ccd)
    vv, cc, ras, decs, cals = [], [], [], [], []
    for v, ccds in by_visit.items():
        path = d / f"v{v}.head"
        if not path.exists():
            continue
        for c, h in zip(ccds, read_head_file(path)):
            h = h.copy()
            for k in ("COMMENT", "HISTORY"):
                h.remove(k, ignore_missing=True, remove_all=True)
            h["NAXIS"] = 2
            h["NAXIS1"], h["NAXIS2"] = NX, NY
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FITSFixedWarning)
                w = WCS(fits.Header(h))
            ra, dec = w.all_pix2world(x, y, 0)
            vv.append(v)
            cc.append(c)
            ras.append(ra)
            decs.append(dec)
            cals.append(np.full(x.size, float(h.get("FLXSCALE", np.nan))))
    if not vv:
        return {"n_ccds": 0}
    return score(vv, cc, np.array(ras), np.array(decs), np.array(cals), truth)


def const_per_visit_limit(truth, images) -> float:
    """Best relative calibration RMS (mmag) of one constant per visit (SCAMP's
    FLXSCALE with a catalog per visit), on the scoring grids."""
    x, y = _grid()
    dev = []
    by_visit: dict[int, list] = {}
    for im in images:
        by_visit.setdefault(im.visit, []).append(
            2.5e3 * np.log10(truth.calibration(im.visit, im.ccd, x, y)))
    for m in by_visit.values():
        m = np.array(m)
        dev.append((m - m.mean()).ravel())
    return float(np.sqrt(np.mean(np.square(np.concatenate(dev)))))


# ----------------------------------------------------------------------------- report
def _med(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None and "error" not in r]
    return float(np.median(vals)) if vals else None


def _f(x, spec=".2f"):
    return "—" if x is None else format(x, spec)


def _ratio(a, b):
    return None if a is None or not b else a / b


def report(n, row) -> str:
    o, s = row["ours"], row["scamp"]
    lines = [f"\n== {n} visits x {row['n_ccds_per_visit']} CCDs: {row['n_det']} detections, "
             f"{row['n_ref']} reference stars (survey made in {row['gen_s']:.1f} s, "
             f"inputs written in {row['write_inputs_s']:.1f} s); {row['repeat']} "
             f"interleaved runs, medians; load average {row['load']}",
             f"  {'':44s} {'jointcal':>10s} {'SCAMP':>10s} {'jc/SCAMP':>9s}"]

    def line(label, a, b, spec=".2f"):
        lines.append(f"  {label:44s} {_f(a, spec):>10s} {_f(b, spec):>10s} "
                     f"{_f(_ratio(a, b), '.3g'):>9s}")
    line("command wall (s)", o.get("wall"), s.get("wall"))
    line("command CPU (s)", o.get("cpu"), s.get("cpu"))
    line("  jointcal fit alone, wall (s)", o.get("fit_s"), s.get("wall"))
    line("  jointcal fit alone, CPU (s)", o.get("fit_cpu"), s.get("cpu"))
    lines.append(f"  jointcal phases wall/CPU (s): imports {_f(o.get('imports_s'))}/"
                 f"{_f(o.get('imports_cpu'))}, read SRC {_f(o.get('read_s'))}/"
                 f"{_f(o.get('read_cpu'))}, fit {_f(o.get('fit_s'))}/{_f(o.get('fit_cpu'))}"
                 f", write {_f(o.get('write_s'))}/{_f(o.get('write_cpu'))}")
    line("peak RSS (GB)", o.get("maxrss_gb"), s.get("maxrss_gb"))
    a, b = row["score_ours"], row["score_scamp"]
    line("WCS vs truth, median CCD RMS (mas)", a.get("wcs_median_mas"), b.get("wcs_median_mas"))
    line("WCS vs truth, worst CCD RMS (mas)", a.get("wcs_worst_mas"), b.get("wcs_worst_mas"))
    line("calibration vs truth, relative RMS (mmag)", a.get("calib_rel_mmag"),
         b.get("calib_rel_mmag"))
    line("calibration vs truth, absolute RMS (mmag)", a.get("calib_abs_mmag"), None)
    lines.append(f"  CCDs calibrated: jointcal {a.get('n_ccds')}, SCAMP {b.get('n_ccds')} "
                 f"of {row['n_images']}; jointcal's written WCS files within "
                 f"{_f(o.get('max_wcs_file_dev_mas'))} mas of its model; a constant per "
                 f"visit (SCAMP's photometric model) can at best reach "
                 f"{row['const_per_visit_mmag']:.1f} mmag here")
    for name, r in (("jointcal", o), ("SCAMP", s)):
        if "error" in r:
            lines.append(f"  {name} FAILED: {r['error'].splitlines()[-1][:200]}")
    lines.append("  " + verdict(n, row))
    return "\n".join(lines)


def verdict(n, row) -> str:
    o, s = row["ours"], row["scamp"]
    a, b = row["score_ours"], row["score_scamp"]
    rw, rc = _ratio(o.get("wall"), s.get("wall")), _ratio(o.get("cpu"), s.get("cpu"))
    ra = _ratio(a.get("wcs_median_mas"), b.get("wcs_median_mas"))
    rp = _ratio(a.get("calib_rel_mmag"), b.get("calib_rel_mmag"))
    killed = [r for r in row.get("runs_scamp", []) if r.get("rc", 0) is None]
    if killed and "error" not in o:  # upper bounds of the ratios
        k = killed[0]
        return (f"verdict {n} visits: jointcal {o['wall']:.1f} s wall, {o['cpu']:.1f} s "
                f"CPU; SCAMP killed after {k['wall']:.0f} s wall ({k['cpu']:.0f} s CPU) "
                f"unfinished -> jointcal/SCAMP < {o['wall'] / k['wall']:.3g} wall, < "
                f"{o['cpu'] / k['cpu']:.3g} CPU (jointcal faster); astrometry median "
                f"{_f(a.get('wcs_median_mas'))} mas (SCAMP: none)")
    if "error" in s or "error" in o:
        return (f"verdict {n} visits: {'SCAMP' if 'error' in s else 'jointcal'} failed "
                f"({(s if 'error' in s else o)['error'].splitlines()[0][:80]})")
    faster = rw is not None and rw < 1 and rc is not None and rc < 1
    slower = rw is not None and rw > 1 and rc is not None and rc > 1
    speed = "jointcal faster" if faster else "jointcal NOT faster" if slower else "mixed"
    better = ra is not None and ra <= 1
    acc = "jointcal at least as accurate" if better else "SCAMP more accurate"
    return (f"verdict {n} visits: jointcal/SCAMP command wall {_f(rw, '.3g')}, CPU "
            f"{_f(rc, '.3g')} "
            f"({speed}); astrometry median {_f(ra, '.3g')} ({acc}), "
            f"relative photometry {_f(rp, '.3g')}")


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--visits", default="5,10,20,30", help="comma-separated ladder")
    ap.add_argument("--grid", default="13x8", help="CCD grid NXxNY (HSC: 104 = 13x8)")
    ap.add_argument("--stars-per-ccd", type=int, default=300)
    ap.add_argument("--spacing", type=float, default=1.0, help="days between visits")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved runs of each")
    ap.add_argument("--threads", type=int, default=2, help="scamp -NTHREADS")
    ap.add_argument("--scamp-limit", type=float, default=300.0,
                    help="stop the ladder after a size where scamp takes longer (s)")
    ap.add_argument("--scamp-kill", type=float, default=1200.0,
                    help="kill a scamp run after this many seconds (the size then "
                    "counts as failed)")
    ap.add_argument("--scamp-stability", default="EXPOSURE",
                    choices=["EXPOSURE", "INSTRUMENT"],
                    help="SCAMP STABILITY_TYPE: EXPOSURE (default: its best accuracy, "
                    "a distortion per CCD per visit) or INSTRUMENT (one distortion per "
                    "CCD shared by the visits: far fewer parameters)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep each size's inputs and "
                    "outputs in the work directory")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        return worker(args.worker)
    if not shutil.which("scamp"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "scamp"], check=True)
    gx, gy = map(int, args.grid.lower().split("x"))
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="bench_jc_scamp_scale_")
        args.workdir = Path(tmp)
    ver = subprocess.run(["scamp", "-v"], capture_output=True, text=True).stdout.strip()
    print(f"{ver}; MOSAIC_TYPE LOOSE, STABILITY_TYPE {args.scamp_stability}, "
          f"DISTORT_DEGREES 3, NTHREADS {args.threads} (EXPOSURE: the choices of "
          f"bench_jointcal_scamp.py, SCAMP's best accuracy there); "
          f"{os.cpu_count()} CPUs", flush=True)
    rows = {}
    try:
        for n in [int(v) for v in args.visits.split(",")]:
            d = args.workdir / f"v{n}"
            shutil.rmtree(d, ignore_errors=True)
            t0 = time.perf_counter()
            det, images, ref, truth = make_survey(n, (gx, gy), args.stars_per_ccd,
                                                  args.spacing)
            t_gen = time.perf_counter() - t0
            t0 = time.perf_counter()
            write_scamp_inputs(det, images, ref, d / "scamp")
            write_jointcal_inputs(det, images, ref, d / "jc")
            t_write = time.perf_counter() - t0
            print(f"{n} visits: {len(det)} detections on {len(images)} CCDs, written in "
                  f"{t_write:.1f} s", flush=True)
            ours, sc = [], []
            loads = [os.getloadavg()[0]]
            for i in range(args.repeat):
                ours.append(run_ours(d / "jc", args.scamp_kill))
                print(f"  run {i + 1}: jointcal {_f(ours[-1].get('wall'))} s wall, "
                      f"{_f(ours[-1].get('cpu'))} s CPU", flush=True)
                sc.append(run_scamp(d / "scamp", args.threads, args.scamp_kill,
                                    args.scamp_stability))
                print(f"  run {i + 1}: scamp {_f(sc[-1].get('wall'))} s wall, "
                      f"{_f(sc[-1].get('cpu'))} s CPU", flush=True)
                loads.append(os.getloadavg()[0])
                if "error" in sc[-1] or "error" in ours[-1]:
                    break
            keys = ("wall", "cpu", "maxrss_gb", "imports_s", "imports_cpu", "read_s",
                    "read_cpu", "fit_s", "fit_cpu", "write_s", "write_cpu",
                    "max_wcs_file_dev_mas")
            o = {k: _med(ours, k) for k in keys}
            s = {k: _med(sc, k) for k in ("wall", "cpu", "maxrss_gb")}
            for src, dst in ((ours, o), (sc, s)):
                if any("error" in r for r in src):
                    dst["error"] = next(r["error"] for r in src if "error" in r)
            row = {"n_ccds_per_visit": gx * gy, "n_det": len(det), "n_ref": len(ref.ra),
                   "n_images": len(images), "gen_s": t_gen, "write_inputs_s": t_write,
                   "repeat": len(ours), "ours": o, "scamp": s, "runs_ours": ours,
                   "runs_scamp": sc,
                   "load": f"{min(loads):.2f}-{max(loads):.2f} (1-min, during the runs)",
                   "score_ours": score_ours(d / "jc", truth) if "error" not in o else {},
                   "score_scamp": score_scamp(d / "scamp", images, truth)
                   if "error" not in s else {},
                   "const_per_visit_mmag": const_per_visit_limit(truth, images)}
            rows[n] = row
            print(report(n, row), flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1, default=str))
            if "error" in s or (s.get("wall") or 0) > args.scamp_limit:
                print(f"stopping the ladder: SCAMP {'failed' if 'error' in s else 'took'} "
                      f"{'' if 'error' in s else _f(s.get('wall')) + ' s'} at {n} visits")
                break
            if not args.keep:
                shutil.rmtree(d, ignore_errors=True)  # the inputs are large
        print("\nsummary (medians; ratios jointcal/SCAMP, < 1: jointcal faster/more "
              "accurate)")
        for n, row in rows.items():
            print("  " + verdict(n, row))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
