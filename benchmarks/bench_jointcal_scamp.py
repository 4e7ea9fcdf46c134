"""jointcal.py vs SCAMP on the same simulated exposures, scored on the simulator's truth.

In one go, on the survey made by ``tractpatch.sim.make_demo_repo`` (default preset
``mini``; 2 filters × 4 visits × 8 CCDs):

1. ours: ``detectSources.py`` → ``makeDiscreteSkyMap.py`` → ``jointcal.py`` per filter
   (as demo/run_demo.sh), fitted WCSs and photoCalibs scored with
   ``tractpatch.diagnostics.truth_score.score_calibrations``;
2. SCAMP: every visit exported as a multi-extension image (one extension per CCD: the
   IMAGE plane with its header TAN WCS) plus a weight map (1/variance, masked pixels 0),
   ``source-extractor`` → one FITS-LDAC catalog per visit (one extension per CCD, SCAMP's
   per-exposure convention), the simulator's reference catalog written as FITS-LDAC, and
   ``scamp`` per filter (MOSAIC_TYPE LOOSE, STABILITY_TYPE EXPOSURE, DISTORT_DEGREES 3,
   SOLVE_PHOTOM Y; the best of the variants tried, see benchmarks/README.md). The
   ``.head`` TPV WCSs are scored on the same grids with the same function; SCAMP's
   FLXSCALE is scored as a *relative* calibration (one offset per filter removed:
   SCAMP's photometry is relative only). SCAMP fits one flux scale per exposure, so the
   best its model can do (the truth averaged per visit) is printed too.

Both are timed (wall and CPU = user + sys of the child processes): the fit alone
(jointcal.py / scamp) and detection + fit (detectSources.py + jointcal.py /
source-extractor + scamp; the export of the MEF images for source-extractor is not
counted).  Then the fit step alone is run ``--fit-repeat`` more times per filter,
jointcal.py and scamp interleaved on the same catalogs, their previous outputs removed
(untimed) before each run; medians of wall and CPU time and jointcal's in-process fit
time (from its log's ``timing:`` line) are printed with the ratios and a one-line
verdict. What the times include: jointcal.py is a whole command (Python start-up and
imports, the SRC and reference catalogs read, the fit, the WCS and photoCalib files and
the metrics written and synced); scamp is a whole command (LDAC catalogs and the
FITS-LDAC reference file read, the fit, the ``.head`` files written; no check plots,
no XML).  The noise floor is computed from the SRC catalogs (see :func:`noise_floor`).

Usage::

    .venv/bin/python benchmarks/bench_jointcal_scamp.py [--preset mini] [--workdir DIR]
        [--repeat N] [--fit-repeat 3] [-j 2] [--json FILE]
        [--scamp-mosaic LOOSE|FIX_FOCALPLANE]
    .venv/bin/python benchmarks/bench_jointcal_scamp.py --preset tiny --quick

``source-extractor`` and ``scamp`` (Debian packages) are installed with apt-get when
missing.  The survey is simulated once per work directory and reused.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ldac import read_head_file, write_ldac  # noqa: E402

from tractpatch.diagnostics.truth_score import _grid  # noqa: E402  (the scoring grid)
from tractpatch.diagnostics.truth_score import score_calibrations  # noqa: E402
from tractpatch.image.photocalib import PhotoCalib  # noqa: E402
from tractpatch.jointcal.inputs import select_sources  # noqa: E402
from tractpatch.sim import make_demo_repo  # noqa: E402
from tractpatch.sim.truth import load_truth  # noqa: E402

BIN = REPO / "bin"
PYTHON = sys.executable
RERUN = "bench"
#: the ledger (outside the rerun directory) remembers units done by an earlier run of
#: the benchmark in the same work directory: redo them, whatever the config
REDO = ["--clobber-output", "--clobber-config"]
#: mask planes whose pixels get weight 0 for source-extractor
MASKED_PLANES = ("BAD", "SAT", "CR", "NO_DATA", "SUSPECT")
#: reference catalog band of each filter
REF_BAND = {"HSC-G": "g", "HSC-R": "r", "HSC-I": "i", "HSC-Z": "z", "HSC-Y": "y"}
SEX_PARAMS = """XWIN_IMAGE
YWIN_IMAGE
ERRAWIN_IMAGE
ERRBWIN_IMAGE
ERRTHETAWIN_IMAGE
X_WORLD
Y_WORLD
FLUX_AUTO
FLUXERR_AUTO
FLUX_APER(1)
FLUXERR_APER(1)
MAG_AUTO
MAGERR_AUTO
FLUX_RADIUS
FWHM_IMAGE
ELONGATION
FLAGS
FLAGS_WEIGHT
"""


# ----------------------------------------------------------------------------- tools
def ensure_tools() -> dict:
    """Paths of ``source-extractor`` and ``scamp``; installs the Debian packages when
    either is missing."""
    if not (shutil.which("source-extractor") and shutil.which("scamp")):
        print("installing scamp and source-extractor with apt-get ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "scamp", "source-extractor"],
                       check=True)
    tools = {"source-extractor": shutil.which("source-extractor"),
             "scamp": shutil.which("scamp")}
    if not all(tools.values()):
        sys.exit("bench_jointcal_scamp: scamp/source-extractor could not be installed; "
                 "install the Debian packages scamp and source-extractor")
    return tools


def tool_version(exe: str) -> str:
    out = subprocess.run([exe, "-v"], capture_output=True, text=True)
    return (out.stdout or out.stderr).strip().splitlines()[0]


def timed(cmd: list[str], cwd=None, log=None) -> float:
    """Run ``cmd``; its wall time (s). Output goes to ``log``; a failure prints it."""
    return timed_cpu(cmd, cwd, log)[0]


def timed_cpu(cmd: list[str], cwd=None, log=None) -> tuple[float, float]:
    """Run ``cmd``; its wall time and CPU time (user + sys of the child and its
    children, from ``getrusage(RUSAGE_CHILDREN)``; much less sensitive than wall time
    to other processes on a shared machine). Output goes to ``log``."""
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    if log is not None:
        Path(log).write_text(f"$ {' '.join(map(str, cmd))}\n{res.stdout}\n{res.stderr}")
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-30:])
        raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} ... failed "
                           f"(rc {res.returncode}):\n{tail}")
    return dt, cpu


# ----------------------------------------------------------------------------- survey
def ensure_survey(workdir: Path, preset: str):
    """The simulated, ingested repository in ``workdir`` (made once, then reused)."""
    model = workdir / "sim" / "truth" / "model.yaml"
    if model.exists():
        truth = load_truth(workdir)
        if truth.preset == preset:
            return truth
        sys.exit(f"{workdir} holds a '{truth.preset}' survey, not '{preset}'; "
                 "use another --workdir")
    print(f"simulating the '{preset}' survey into {workdir} ...", flush=True)
    make_demo_repo(workdir, preset=preset)
    return load_truth(workdir)


def visits_by_filter(truth) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for v in truth.visits:
        out.setdefault(truth.visit(v)["filter"], []).append(v)
    return out


def exposure_path(workdir: Path, truth, visit: int, ccd: int) -> Path:
    v = truth.visit(visit)
    hits = list((workdir / "sim" / "exposures").glob(
        f"*/{v['filter']}/SIM-{visit:07d}-{ccd:03d}.fits"))
    if len(hits) != 1:
        raise FileNotFoundError(f"exposure of visit {visit} ccd {ccd} not found under "
                                f"{workdir}/sim/exposures")
    return hits[0]


# ----------------------------------------------------------------------------- scoring
def calib_scores(score: dict, prefix: str) -> dict:
    """Absolute and relative (mean offset removed) calibration RMS from a
    ``score_calibrations`` result; every CCD is scored on the same number of grid
    points, so relative² = absolute² − mean²."""
    rms = score[f"{prefix} flux calibration vs truth (RMS)"]["value"]
    mean = score[f"{prefix} flux calibration mean offset"]["value"]
    return {"calib_abs_mmag": rms, "calib_offset_mmag": mean,
            "calib_rel_mmag": float(np.sqrt(max(rms ** 2 - mean ** 2, 0.0)))}


def score_dir(files: list[Path], dest: Path, truth, prefix: str) -> dict:
    """Score the result ``files`` (``<prefix>_wcs-V-C.fits`` + photoCalibs) after linking
    them into ``dest`` (score_calibrations scores a whole directory)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        link = dest / f.name
        if not link.exists():
            link.symlink_to(f.resolve())
    s = score_calibrations(dest, truth, prefix=prefix)
    out = {"n_ccds": len(s.get("per_ccd", []))}
    if f"{prefix} WCS vs true mapping (RMS over all CCDs)" in s:
        out["wcs_rms_mas"] = s[f"{prefix} WCS vs true mapping (RMS over all CCDs)"]["value"]
        out["wcs_worst_ccd_mas"] = s[f"{prefix} WCS worst CCD (RMS)"]["value"]
    if f"{prefix} flux calibration vs truth (RMS)" in s:
        out.update(calib_scores(s, prefix))
    out["per_ccd"] = s.get("per_ccd", [])
    return out


# ----------------------------------------------------------------------------- ours
def run_ours(workdir: Path, filters: dict, truth, rerun: str, jobs: int, logdir: Path,
             jointcal_config: list[str] | None = None):
    """detectSources + makeDiscreteSkyMap + jointcal per filter; times and scores.
    ``jointcal_config``: ``NAME=VALUE`` overrides passed with ``--config``."""
    res: dict = {}
    for f in filters:
        t_det = timed([PYTHON, BIN / "detectSources.py", workdir, "--rerun", rerun,
                       "--id", f"filter={f}", "-j", str(jobs), *REDO],
                      log=logdir / f"detect-{f}.log")
        res[f] = {"detect_s": t_det}
    t_sky = timed([PYTHON, BIN / "makeDiscreteSkyMap.py", workdir, "--rerun", rerun,
                   "--id", "filter=" + "^".join(filters), *REDO],
                  log=logdir / "skymap.log")
    results = workdir / "rerun" / rerun / "jointcal-results" / "0"
    overrides = [a for kv in (jointcal_config or []) for a in ("--config", kv)]
    for f, visits in filters.items():
        r = res[f]
        r.update(skymap_s=t_sky, n_ccds_in=len(visits) * len(truth.ccds))
        cmd = [PYTHON, BIN / "jointcal.py", workdir, "--rerun", rerun,
               "--id", f"filter={f}", "tract=0", *overrides, *REDO]
        try:
            t_jc, c_jc = timed_cpu(cmd, log=logdir / f"jointcal-{f}.log")
        except RuntimeError as exc:
            r["error"] = str(exc)
            continue
        files = [p for p in results.glob("jointcal_*-*-*.fits")
                 if _visit_of(p) in visits]
        r.update(fit_s=t_jc, fit_cpu_s=c_jc, total_s=r["detect_s"] + t_jc,
                 cmd=[str(c) for c in cmd], results=str(results),
                 **inprocess_times(logdir / f"jointcal-{f}.log"))
        r.update(score_dir(files, logdir / f"score-jointcal-{f}", truth, "jointcal"))
        if not files:
            r["error"] = "jointcal wrote no results; see " + str(logdir / f"jointcal-{f}.log")
    return res


_TIMING = re.compile(r"timing: inputs ([\d.]+) s, fit ([\d.]+) s, outputs ([\d.]+) s "
                     r"\(\d+ files\); CPU ([\d.]+) s, ([\d.]+) s, ([\d.]+) s")


def inprocess_times(log: Path) -> dict:
    """jointcal.py's own timing line: reading inputs, the fit, writing outputs (wall and
    CPU s)."""
    m = _TIMING.search(Path(log).read_text()) if Path(log).exists() else None
    if m is None:
        return {}
    v = [float(x) for x in m.groups()]
    return dict(inputs_s=v[0], solve_s=v[1], outputs_s=v[2], inputs_cpu_s=v[3],
                solve_cpu_s=v[4], outputs_cpu_s=v[5])


def time_fits(ours: dict, scamp: dict, n: int, logdir: Path) -> dict:
    """The fit step alone, ``n`` times per filter, jointcal.py and scamp interleaved on
    the same inputs (SRC catalogs / LDAC catalogs of the last full run). Before each
    run its previous outputs are removed, untimed, for both (SCAMP's ``.head`` files,
    jointcal's results folder), so neither replaces files. Returns per filter the
    lists of wall, CPU and in-process times."""
    out: dict = {}
    for f in ours:
        o, s = ours[f], scamp.get(f, {})
        if "cmd" not in o or "cmd" not in s or "error" in o or "error" in s:
            continue
        t = out.setdefault(f, {k: [] for k in ("jc_wall", "jc_cpu", "jc_solve",
                                               "jc_solve_cpu", "jc_inproc",
                                               "jc_inproc_cpu", "sc_wall", "sc_cpu")})
        for i in range(n):
            shutil.rmtree(o["results"], ignore_errors=True)
            log = logdir / f"fit-jointcal-{f}-{i}.log"
            w, c = timed_cpu(o["cmd"], log=log)
            ip = inprocess_times(log)
            t["jc_wall"].append(w)
            t["jc_cpu"].append(c)
            if ip:
                t["jc_solve"].append(ip["solve_s"])
                t["jc_solve_cpu"].append(ip["solve_cpu_s"])
                t["jc_inproc"].append(ip["inputs_s"] + ip["solve_s"] + ip["outputs_s"])
                t["jc_inproc_cpu"].append(ip["inputs_cpu_s"] + ip["solve_cpu_s"]
                                          + ip["outputs_cpu_s"])
            for h in Path(s["cwd"]).glob("*.head"):
                h.unlink()
            w, c = timed_cpu(s["cmd"], cwd=s["cwd"], log=logdir / f"fit-scamp-{f}-{i}.log")
            t["sc_wall"].append(w)
            t["sc_cpu"].append(c)
    return out


def constant_model_limit(truth, visits: list[int], per: str = "visit") -> float:
    """Best relative calibration RMS (mmag) of a model with one constant per visit
    (``per="visit"``: SCAMP's FLXSCALE) or per CCD and visit (``"ccd"``): the RMS of
    the true calibration about its mean over each visit (or CCD), on the scoring grid."""
    ny, nx = truth.ccd_shape()
    x, y = _grid(nx, ny)
    dev = []
    for v in visits:
        m = np.array([2500 * np.log10(truth.calibration(v, c, x, y)) for c in truth.ccds])
        dev.append(m - (m.mean() if per == "visit" else m.mean(axis=1, keepdims=True)))
    return float(np.sqrt(np.mean(np.square(dev))))


def _visit_of(path: Path) -> int | None:
    """Visit of a ``<prefix>_<kind>-<visit>-<ccd>.fits`` result file (zero-padded or not)."""
    m = re.search(r"-(\d+)-(\d+)\.fits$", path.name)
    return int(m.group(1)) if m else None


def noise_floor(workdir: Path, rerun: str, filters: dict, truth, min_snr=10.0) -> dict:
    """Noise floor of a per-CCD calibration from the SRC catalogs of ``rerun``.

    For each CCD the sources jointcal would select (``select_sources``: S/N ≥ 10, star,
    no bad flags) give per-star errors; a per-CCD offset fitted to them has the
    inverse-variance error ``1/sqrt(sum 1/s_i²)``:

    - astrometry: ``s_i = hypot(x_err, y_err)`` × pixel scale (2-D, as the WCS score
      is a 2-D separation), mas;
    - photometry: ``s_i = 1.0857 flux_psf_err / flux_psf``, mmag.

    Returned per filter: the RMS over CCDs of these, and the median number of selected
    stars per CCD.  A model with ``p`` free parameters per CCD (rather than 1) has a
    floor about ``sqrt(p)`` higher; the constrained models share most parameters.
    """
    scale_mas = truth.camera.pixel_scale * 1000
    out = {}
    for f, visits in filters.items():
        ast, pho, nstars = [], [], []
        for path in (workdir / "rerun" / rerun).glob(f"*/{f}/output/SRC-*.fits"):
            t = Table.read(path, hdu=1)
            ok = select_sources(t, min_snr=min_snr)
            if ok.sum() < 3:
                continue
            t = t[ok]
            s_pos = np.hypot(t["x_err"], t["y_err"]) * scale_mas
            s_mag = 1085.7 * t["flux_psf_err"] / t["flux_psf"]
            ast.append(1 / np.sqrt(np.sum(1 / s_pos ** 2)))
            pho.append(1 / np.sqrt(np.sum(1 / s_mag ** 2)))
            nstars.append(int(ok.sum()))
        out[f] = {"wcs_floor_mas": float(np.sqrt(np.mean(np.square(ast)))),
                  "calib_floor_mmag": float(np.sqrt(np.mean(np.square(pho)))),
                  "median_stars_per_ccd": float(np.median(nstars)),
                  "calib_limit_const_per_visit_mmag": constant_model_limit(truth, visits),
                  "calib_limit_const_per_ccd_mmag": constant_model_limit(truth, visits,
                                                                         "ccd")}
    return out


# ----------------------------------------------------------------------------- SCAMP
def export_visit(workdir: Path, truth, visit: int, dest: Path) -> tuple[Path, Path]:
    """Write the MEF image (one extension per CCD: IMAGE plane + its header WCS and
    the keywords SCAMP reads) and the weight MEF (1/variance; masked pixels 0)."""
    v = truth.visit(visit)
    imgs, wgts = [fits.PrimaryHDU()], [fits.PrimaryHDU()]
    for ccd in truth.ccds:
        with fits.open(exposure_path(workdir, truth, visit, ccd)) as h:
            hdr = h["IMAGE"].header.copy()
            prim = h[0].header
            img = np.asarray(h["IMAGE"].data, np.float32)
            var = np.asarray(h["VARIANCE"].data, np.float64)
            mask = np.asarray(h["MASK"].data)
            mh = h["MASK"].header
        bits = 0
        for plane in MASKED_PLANES:
            if f"MP_{plane}" in mh:
                bits |= 1 << int(mh[f"MP_{plane}"])
        good = np.isfinite(img) & np.isfinite(var) & (var > 0) & ((mask & bits) == 0)
        wgt = np.where(good, 1.0 / np.where(var > 0, var, 1.0), 0.0).astype(np.float32)
        img = np.where(np.isfinite(img), img, 0.0).astype(np.float32)
        for k in ("EXTNAME", "CHECKSUM", "DATASUM"):
            hdr.remove(k, ignore_missing=True)
        for k in ("VISIT", "CCD", "FILTER", "EXPTIME", "MJD-OBS", "DATE-OBS", "GAIN",
                  "SATURATE"):
            if k in prim:
                hdr[k] = prim[k]
        hdr["AIRMASS"] = 1.0
        hdr["EXTNAME"] = f"CCD{ccd:03d}"
        imgs.append(fits.ImageHDU(img, hdr))
        wgts.append(fits.ImageHDU(wgt, hdr))
    imgs[0].header["FILTER"] = v["filter"]
    img_path, wgt_path = dest / f"v{visit}.fits", dest / f"v{visit}.weight.fits"
    fits.HDUList(imgs).writeto(img_path, overwrite=True)
    fits.HDUList(wgts).writeto(wgt_path, overwrite=True)
    return img_path, wgt_path


def sextractor_config(dest: Path, fwhm_arcsec: float) -> list[str]:
    """Command-line options of source-extractor (parameters file written in ``dest``)."""
    (dest / "scamp.param").write_text(SEX_PARAMS)
    share = Path("/usr/share/source-extractor")
    conv = share / "gauss_3.0_5x5.conv"
    return ["-c", str(share / "default.sex"), "-CATALOG_TYPE", "FITS_LDAC",
            "-PARAMETERS_NAME", str(dest / "scamp.param"),
            "-FILTER_NAME", str(conv), "-STARNNW_NAME", str(share / "default.nnw"),
            "-DETECT_THRESH", "5", "-ANALYSIS_THRESH", "5", "-DETECT_MINAREA", "5",
            "-WEIGHT_TYPE", "MAP_WEIGHT", "-GAIN_KEY", "GAIN", "-SATUR_KEY", "SATURATE",
            "-PHOT_APERTURES", "15", "-SEEING_FWHM", f"{fwhm_arcsec:.2f}",
            "-BACK_SIZE", "128", "-CHECKIMAGE_TYPE", "NONE", "-VERBOSE_TYPE", "QUIET",
            "-NTHREADS", "1"]


def write_refcat(workdir: Path, truth, visits: list[int], band: str, path: Path) -> float:
    """The simulator's reference catalog as FITS-LDAC, positions moved to the mean epoch
    of ``visits`` (SCAMP applies proper motions only to its online Gaia catalogs; the
    visits of a filter span days, so the residual motion is < 0.1 mas).  Returns the
    epoch."""
    ref = Table.read(workdir / "sim" / "refcat.fits", hdu=1)
    epoch = float(np.mean([truth.visit(v)["epoch"] for v in visits]))
    dt = epoch - np.asarray(ref["epoch"], float)
    dec0 = np.asarray(ref["dec"], float)
    dec = dec0 + np.asarray(ref["pmdec"]) * dt / 3.6e6
    ra = np.mod(np.asarray(ref["ra"], float) + np.asarray(ref["pmra"]) * dt / 3.6e6
                / np.cos(np.radians(dec0)), 360)
    era = np.hypot(ref["ra_err"], ref["pmra_err"] * dt)
    edec = np.hypot(ref["dec_err"], ref["pmdec_err"] * dt)
    n = len(ref)
    t = Table()
    t["X_WORLD"] = ra
    t["Y_WORLD"] = dec
    t["ERRA_WORLD"] = np.maximum(era, edec) / 3.6e6
    t["ERRB_WORLD"] = np.minimum(era, edec) / 3.6e6
    t["ERRTHETA_WORLD"] = np.where(era >= edec, 0.0, 90.0).astype(np.float32)
    t["MAG"] = np.asarray(ref[band], np.float32)
    t["MAGERR"] = np.asarray(ref[f"{band}_err"], np.float32)
    t["PMALPHA_J2000"] = np.asarray(ref["pmra"], np.float32)
    t["PMDELTA_J2000"] = np.asarray(ref["pmdec"], np.float32)
    t["PMALPHAERR_J2000"] = np.asarray(ref["pmra_err"], np.float32)
    t["PMDELTAERR_J2000"] = np.asarray(ref["pmdec_err"], np.float32)
    t["OBSDATE"] = np.full(n, epoch)
    t["FLAGS"] = np.zeros(n, np.int16)
    hdr = fits.Header()
    hdr["NAXIS"] = 2
    hdr["NAXIS1"], hdr["NAXIS2"] = 1, 1
    write_ldac(path, [(hdr, t)])
    return epoch


def split_ldac(cat: Path, ccds: list[int]) -> list[str]:
    """Split a per-visit LDAC catalog into one single-CCD catalog per extension
    (``--scamp-layout ccd``: SCAMP then fits one photometric scale per CCD)."""
    names = []
    raw = cat.read_bytes()
    with fits.open(cat) as h:
        # byte copies of the HDUs: SCAMP crashes on LDAC_IMHEAD tables re-written by
        # astropy
        span = [(h.fileinfo(i)["hdrLoc"], h.fileinfo(i)["datLoc"] + h.fileinfo(i)["datSpan"])
                for i in range(len(h))]
    for i, ccd in enumerate(ccds):
        name = f"{cat.stem}-{ccd:03d}.cat"
        (a0, a1), (b0, _), (_, c1) = span[0], span[1 + 2 * i], span[2 + 2 * i]
        pad = lambda n: (-n) % 2880  # noqa: E731  FITS blocks
        chunk = raw[a0:a1] + b"\0" * pad(a1 - a0) + raw[b0:c1] + b"\0" * pad(c1 - b0)
        (cat.parent / name).write_bytes(chunk)
        names.append(name)
    return names


def scamp_options(mosaic: str, distort: int, jobs: int,
                  stability: str = "EXPOSURE") -> list[str]:
    """SCAMP's configuration for this problem (on top of ``scamp -dd`` defaults)."""
    return ["-ASTREF_CATALOG", "FILE", "-ASTREFCAT_NAME", "ref.cat",
            "-ASTREFCENT_KEYS", "X_WORLD,Y_WORLD",
            "-ASTREFERR_KEYS", "ERRA_WORLD,ERRB_WORLD,ERRTHETA_WORLD",
            "-ASTREFMAG_KEY", "MAG", "-ASTREFMAGERR_KEY", "MAGERR",
            "-ASTREFOBSDATE_KEY", "OBSDATE",
            "-ASTREFPROP_KEYS", "PMALPHA_J2000,PMDELTA_J2000",
            "-ASTREFPROPERR_KEYS", "PMALPHAERR_J2000,PMDELTAERR_J2000",
            "-MATCH", "Y", "-POSITION_MAXERR", "0.5", "-PIXSCALE_MAXERR", "1.05",
            "-POSANGLE_MAXERR", "1.0", "-CROSSID_RADIUS", "1.5",
            "-MOSAIC_TYPE", mosaic, "-STABILITY_TYPE", stability,
            "-ASTRINSTRU_KEY", "FILTER", "-PHOTINSTRU_KEY", "FILTER",
            "-DISTORT_DEGREES", str(distort), "-PROJECTION_TYPE", "TPV",
            "-SOLVE_PHOTOM", "Y", "-PHOTFLUX_KEY", "FLUX_AUTO",
            "-PHOTFLUXERR_KEY", "FLUXERR_AUTO", "-SN_THRESHOLDS", "10,50",
            "-CHECKPLOT_TYPE", "NONE", "-CHECKPLOT_DEV", "NULL", "-WRITE_XML", "N",
            "-HEADER_TYPE", "NORMAL", "-NTHREADS", str(jobs), "-VERBOSE_TYPE", "NORMAL"]


def parse_scamp_heads(cdir: Path, truth, visits: list[int], dest: Path,
                      calib0: float) -> list[Path]:
    """Turn the ``.head`` blocks into ``scamp_wcs-V-C.fits`` (TPV headers that
    astropy/read_wcs reads) and ``scamp_photoCalib-V-C.fits`` (constant FLXSCALE ×
    the nominal calibration ``calib0``: a relative calibration)."""
    dest.mkdir(parents=True, exist_ok=True)
    files = []
    ny, nx = truth.ccd_shape()
    for v in visits:
        if (cdir / f"v{v}.head").exists():  # one block per CCD
            pairs = list(zip(truth.ccds, read_head_file(cdir / f"v{v}.head")))
        else:  # --scamp-layout ccd: one file per CCD
            pairs = [(ccd, read_head_file(cdir / f"v{v}-{ccd:03d}.head")[0])
                     for ccd in truth.ccds if (cdir / f"v{v}-{ccd:03d}.head").exists()]
        for ccd, h in pairs:
            h = h.copy()
            for k in ("COMMENT", "HISTORY", "NAXIS", "NAXIS1", "NAXIS2"):
                h.remove(k, ignore_missing=True, remove_all=True)  # SCAMP's are not ASCII
            wpath = dest / f"scamp_wcs-{v}-{ccd}.fits"
            fits.PrimaryHDU(header=h).writeto(wpath, overwrite=True)
            scale = float(h.get("FLXSCALE", np.nan))
            ppath = dest / f"scamp_photoCalib-{v}-{ccd}.fits"
            if np.isfinite(scale) and scale > 0:
                PhotoCalib.constant(calib0 * scale, bbox=(0.0, 0.0, float(nx),
                                                          float(ny))).write(ppath)
                files.append(ppath)
            files.append(wpath)
    return files


def scamp_summary(log: Path) -> list[str]:
    """Lines of the SCAMP log with its internal/reference residual statistics."""
    keep, grab = [], False
    for line in log.read_text(errors="replace").splitlines():
        if "Astrometric stats" in line or "Photometric" in line and "stats" in line:
            grab = True
        if grab:
            keep.append(line.rstrip())
            if len(keep) > 40:
                break
    return keep


def run_scamp(workdir: Path, filters: dict, truth, tools: dict, sdir: Path, jobs: int,
              mosaic: str, distort: int, stability: str = "EXPOSURE",
              layout: str = "visit") -> dict:
    """source-extractor + SCAMP per filter; times and scores.  ``layout`` "visit": one
    catalog per visit with one extension per CCD (SCAMP's convention); "ccd": one
    catalog per CCD."""
    res: dict = {}
    sdir.mkdir(parents=True, exist_ok=True)
    for f, visits in filters.items():
        cdir = sdir / f
        cdir.mkdir(exist_ok=True)
        fwhm = float(np.median([truth.visit(v)["fwhm"] for v in visits]))
        sex_opts = sextractor_config(cdir, fwhm)
        t_export = t_sex = 0.0
        cats = []
        for v in visits:
            t0 = time.perf_counter()
            img, wgt = export_visit(workdir, truth, v, cdir)
            t_export += time.perf_counter() - t0
            cat = f"v{v}.cat"
            t_sex += timed([tools["source-extractor"], img.name, *sex_opts,
                            "-WEIGHT_IMAGE", wgt.name, "-CATALOG_NAME", cat], cwd=cdir,
                           log=cdir / f"sex-{v}.log")
            cats += [cat] if layout == "visit" else split_ldac(cdir / cat, truth.ccds)
            img.unlink()  # the exports are large; the catalogs are what SCAMP needs
            wgt.unlink()
        epoch = write_refcat(workdir, truth, visits, REF_BAND.get(f, "r"), cdir / "ref.cat")
        for h in cdir.glob("*.head"):
            h.unlink()
        log = cdir / "scamp.log"
        r: dict = {"extract_s": t_sex, "export_s": t_export, "ref_epoch": epoch,
                   "n_ccds_in": len(visits) * len(truth.ccds)}
        cmd = [tools["scamp"], *cats, "-c", "/dev/null",
               *scamp_options(mosaic, distort, jobs, stability)]
        r.update(cmd=cmd, cwd=str(cdir))
        try:
            r["fit_s"], r["fit_cpu_s"] = timed_cpu(cmd, cwd=cdir, log=log)
        except RuntimeError as exc:
            r["error"] = str(exc)
            res[f] = r
            continue
        r["total_s"] = t_sex + r["fit_s"]
        calib0 = float(truth.filters[f]["calib0"])
        files = parse_scamp_heads(cdir, truth, visits, sdir / f"score-scamp-{f}", calib0)
        r.update(score_dir(files, sdir / f"score-scamp-{f}", truth, "scamp"))
        r["log_summary"] = scamp_summary(log)
        res[f] = r
    return res


# ----------------------------------------------------------------------------- report
def ratio(a, b):
    return float(a / b) if (a is not None and b not in (None, 0)) else None


def fmt(x, spec=".2f"):
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) \
        else format(x, spec)


def best(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return min(vals) if vals else None


def summarise(ours_runs, scamp_runs, floor, filters) -> dict:
    """Per filter: best-of-N times, the scores of the last run, ratios."""
    table = {}
    for f in filters:
        o = [r[f] for r in ours_runs]
        s = [r[f] for r in scamp_runs]
        ol, sl = o[-1], s[-1]
        row = {
            "jointcal_fit_s": best(o, "fit_s"), "jointcal_total_s": best(o, "total_s"),
            "scamp_fit_s": best(s, "fit_s"), "scamp_total_s": best(s, "total_s"),
            "jointcal_wcs_mas": ol.get("wcs_rms_mas"),
            "jointcal_wcs_worst_mas": ol.get("wcs_worst_ccd_mas"),
            "scamp_wcs_mas": sl.get("wcs_rms_mas"),
            "scamp_wcs_worst_mas": sl.get("wcs_worst_ccd_mas"),
            "jointcal_calib_abs_mmag": ol.get("calib_abs_mmag"),
            "jointcal_calib_rel_mmag": ol.get("calib_rel_mmag"),
            "scamp_calib_rel_mmag": sl.get("calib_rel_mmag"),
            "jointcal_ccds": f"{ol.get('n_ccds', 0)}/{ol.get('n_ccds_in')}",
            "scamp_ccds": f"{sl.get('n_ccds', 0)}/{sl.get('n_ccds_in')}",
            **{f"floor_{k}": v for k, v in floor[f].items() if v is not None},
        }
        row["time_ratio_fit"] = ratio(row["scamp_fit_s"], row["jointcal_fit_s"])
        row["time_ratio_total"] = ratio(row["scamp_total_s"], row["jointcal_total_s"])
        row["wcs_ratio"] = ratio(row["scamp_wcs_mas"], row["jointcal_wcs_mas"])
        row["calib_rel_ratio"] = ratio(row["scamp_calib_rel_mmag"],
                                       row["jointcal_calib_rel_mmag"])
        table[f] = row
    return table


def print_table(table: dict, meta: dict) -> None:
    print()
    print(f"jointcal.py vs SCAMP — preset {meta['preset']}, {meta['repeat']} run(s) "
          f"(times: best of runs, wall s), load average before/after "
          f"{meta['load_before']} / {meta['load_after']}")
    print(f"  {meta['scamp_version']}; {meta['sextractor_version']}; SCAMP MOSAIC_TYPE "
          f"{meta['scamp_mosaic']}, STABILITY_TYPE {meta['scamp_stability']}, "
          f"DISTORT_DEGREES {meta['scamp_distort']}, one catalog per "
          f"{meta['scamp_layout']}")
    rows = [
        ("fit wall time (s): jointcal.py / scamp", "jointcal_fit_s", "scamp_fit_s",
         "time_ratio_fit", ".2f"),
        ("detect+fit (s): detectSources+jointcal / SExtractor+scamp", "jointcal_total_s",
         "scamp_total_s", "time_ratio_total", ".2f"),
        ("WCS vs truth, RMS over CCD grids (mas)", "jointcal_wcs_mas", "scamp_wcs_mas",
         "wcs_ratio", ".2f"),
        ("WCS worst CCD RMS (mas)", "jointcal_wcs_worst_mas", "scamp_wcs_worst_mas",
         None, ".2f"),
        ("calibration vs truth, relative (mmag)", "jointcal_calib_rel_mmag",
         "scamp_calib_rel_mmag", "calib_rel_ratio", ".2f"),
        ("calibration vs truth, absolute (mmag)", "jointcal_calib_abs_mmag", None, None,
         ".2f"),
        ("CCDs calibrated / input", "jointcal_ccds", "scamp_ccds", None, "s"),
    ]
    for f, row in table.items():
        print(f"\n  {f:<58s} {'jointcal':>10s} {'SCAMP':>10s} {'SCAMP/jc':>9s}")
        for label, kj, ks, kr, spec in rows:
            vj = row.get(kj)
            vs = row.get(ks) if ks else None
            vr = row.get(kr) if kr else None
            print(f"  {label:<58s} {fmt(vj, spec):>10s} "
                  f"{(fmt(vs, spec) if ks else 'n/a'):>10s} {fmt(vr):>9s}")
        print(f"  noise floor (per-CCD offset from the selected stars): "
              f"{fmt(row.get('floor_wcs_floor_mas'))} mas, "
              f"{fmt(row.get('floor_calib_floor_mmag'))} mmag "
              f"(median {fmt(row.get('floor_median_stars_per_ccd'), '.0f')} stars/CCD)")
        print(f"  model limit of a constant calibration per visit (SCAMP's FLXSCALE): "
              f"{fmt(row.get('floor_calib_limit_const_per_visit_mmag'))} mmag; per CCD: "
              f"{fmt(row.get('floor_calib_limit_const_per_ccd_mmag'))} mmag")
    print("\n  SCAMP's photometry is relative only: its score removes one mean offset per "
          "filter;\n  jointcal's 'absolute' is against the true nJy calibration, "
          "'relative' removes its mean offset the same way.")
    print("  Noise floor: per CCD 1/sqrt(sum_i 1/s_i^2) over the stars jointcal selects "
          "(S/N>=10, star, unflagged),\n  s_i = hypot(x_err, y_err) x pixel scale "
          "(mas) and 1.0857 flux_psf_err/flux_psf (mmag); RMS over CCDs.")


def print_fit_times(fit_times: dict, meta: dict) -> dict:
    """The fit step alone: medians of the interleaved runs, ratios, a one-line verdict.
    Returns the medians and ratios per filter."""
    if not fit_times:
        return {}
    med = {f: {k: (statistics.median(v) if v else None) for k, v in t.items()}
           for f, t in fit_times.items()}
    n = max(len(t["jc_wall"]) for t in fit_times.values())
    print(f"\n  fit step alone: median of {n} interleaved runs per filter, load average "
          f"{meta['load_after']} ({meta['cpu_count']} CPUs)")
    print(f"  {'':8s} {'jointcal.py: command':>21s} {'in-process fit':>15s} "
          f"{'scamp':>15s}   jointcal/SCAMP: command   fit")
    print(f"  {'filter':8s} {'wall':>10s} {'CPU':>10s} {'wall':>7s} {'CPU':>7s} "
          f"{'wall':>7s} {'CPU':>7s}   {'wall':>7s} {'CPU':>7s} {'wall':>7s} {'CPU':>7s}")
    out = {}
    for f, m in med.items():
        r = {"wall": ratio(m["jc_wall"], m["sc_wall"]), "cpu": ratio(m["jc_cpu"], m["sc_cpu"]),
             "fit": ratio(m["jc_solve"], m["sc_wall"]),
             "fit_cpu": ratio(m["jc_solve_cpu"], m["sc_cpu"]),
             "inproc": ratio(m["jc_inproc"], m["sc_wall"]),
             "inproc_cpu": ratio(m["jc_inproc_cpu"], m["sc_cpu"])}
        out[f] = {"medians": m, "ratios": r}
        print(f"  {f:8s} {fmt(m['jc_wall']):>10s} {fmt(m['jc_cpu']):>10s} "
              f"{fmt(m['jc_solve']):>7s} {fmt(m['jc_solve_cpu']):>7s} "
              f"{fmt(m['sc_wall']):>7s} {fmt(m['sc_cpu']):>7s}   {fmt(r['wall']):>7s} "
              f"{fmt(r['cpu']):>7s} {fmt(r['fit']):>7s} {fmt(r['fit_cpu']):>7s}")
    print("  jointcal.py wall/CPU: the whole command (Python start-up and imports, about "
          "1.2 s of CPU, reading the\n  SRC catalogs and reference catalog, the fit, "
          "writing 2 files per CCD + metrics, durable);\n  'fit': the in-process solve "
          "alone (its log's timing line). scamp: the whole command (reading the\n  LDAC "
          "catalogs and the FITS-LDAC reference file, the fit, writing the .head files;"
          " no check plots, no XML).")
    worst = {k: max((o["ratios"][k] for o in out.values() if o["ratios"][k] is not None),
                    default=None) for k in ("wall", "cpu", "fit", "fit_cpu", "inproc",
                                            "inproc_cpu")}
    faster = worst["wall"] is not None and worst["wall"] < 1
    print(f"  verdict: jointcal.py/SCAMP (worst filter) command wall {fmt(worst['wall'])}, "
          f"CPU {fmt(worst['cpu'])}; in-process fit wall {fmt(worst['fit'])}, CPU "
          f"{fmt(worst['fit_cpu'])}; in-process inputs+fit+outputs wall "
          f"{fmt(worst['inproc'])}, CPU {fmt(worst['inproc_cpu'])} -> the command is "
          f"{'faster' if faster else 'NOT faster'} than SCAMP (goal: ratio < 1)")
    return out


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mini", help="simulator preset (default mini)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="work directory (default: a temporary one, removed at the end)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each pipeline")
    ap.add_argument("-j", "--jobs", type=int, default=2,
                    help="processes for detectSources / threads for scamp")
    ap.add_argument("--scamp-mosaic", default="LOOSE",
                    choices=["LOOSE", "FIX_FOCALPLANE", "UNCHANGED", "SAME_CRVAL",
                             "SHARE_PROJAXIS"], help="SCAMP MOSAIC_TYPE")
    ap.add_argument("--scamp-distort", type=int, default=3, help="SCAMP DISTORT_DEGREES")
    ap.add_argument("--scamp-stability", default="EXPOSURE",
                    choices=["EXPOSURE", "INSTRUMENT", "PRE-DISTORTED"],
                    help="SCAMP STABILITY_TYPE (EXPOSURE: 8 vs 19 mas for INSTRUMENT on "
                    "mini)")
    ap.add_argument("--scamp-layout", default="visit", choices=["visit", "ccd"],
                    help="SCAMP input: one catalog per visit (extensions = CCDs) or one "
                    "per CCD (SCAMP then fits a flux scale per CCD, not per visit)")
    ap.add_argument("--jointcal-config", action="append", metavar="NAME=VALUE",
                    help="jointcal.py --config override (repeatable), e.g. "
                    "minMeasurementsPerCcd=10 for --preset tiny")
    ap.add_argument("--fit-repeat", type=int, default=3,
                    help="after the full runs, time the fit step alone this many times "
                    "per filter, jointcal.py and scamp interleaved (medians reported)")
    ap.add_argument("--quick", action="store_true",
                    help="one filter only (for iterating on the benchmark itself)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    if args.quick and args.preset == "tiny" and not args.jointcal_config:
        # ~20 selected stars per tiny CCD: below jointcal's default of 20 measurements
        args.jointcal_config = ["minMeasurementsPerCcd=8"]
    tools = ensure_tools()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="bench_jointcal_scamp_")
        args.workdir = Path(tmp)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["PATH"] = f"{Path(PYTHON).parent}:{os.environ['PATH']}"
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        truth = ensure_survey(workdir, args.preset)
        filters = visits_by_filter(truth)
        if args.quick:
            filters = dict(list(filters.items())[:1])
        ours_runs, scamp_runs = [], []
        for i in range(args.repeat):
            rerun = f"{RERUN}{i}"
            logdir = workdir / "bench" / rerun
            if logdir.exists():
                shutil.rmtree(logdir)
            if (workdir / "rerun" / rerun).exists():
                shutil.rmtree(workdir / "rerun" / rerun)
            logdir.mkdir(parents=True)
            print(f"run {i + 1}/{args.repeat}: tractpatch ...", flush=True)
            ours_runs.append(run_ours(workdir, filters, truth, rerun, args.jobs, logdir,
                                      args.jointcal_config))
            print(f"run {i + 1}/{args.repeat}: source-extractor + SCAMP ...", flush=True)
            scamp_runs.append(run_scamp(workdir, filters, truth, tools, logdir / "scamp",
                                        args.jobs, args.scamp_mosaic, args.scamp_distort,
                                        args.scamp_stability, args.scamp_layout))
        fit_times = {}
        if args.fit_repeat > 0:
            print(f"fit step alone, {args.fit_repeat} interleaved runs ...", flush=True)
            fdir = workdir / "bench" / "fit"
            fdir.mkdir(parents=True, exist_ok=True)
            fit_times = time_fits(ours_runs[-1], scamp_runs[-1], args.fit_repeat, fdir)
        floor = noise_floor(workdir, f"{RERUN}{args.repeat - 1}", filters, truth)
        meta = {"preset": args.preset, "repeat": args.repeat, "jobs": args.jobs,
                "load_before": load_before,
                "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                "cpu_count": os.cpu_count(),
                "scamp_version": tool_version(tools["scamp"]),
                "sextractor_version": tool_version(tools["source-extractor"]),
                "scamp_mosaic": args.scamp_mosaic, "scamp_distort": args.scamp_distort,
                "scamp_stability": args.scamp_stability,
                "scamp_layout": args.scamp_layout,
                "workdir": str(workdir)}
        table = summarise(ours_runs, scamp_runs, floor, filters)
        print_table(table, meta)
        speed = print_fit_times(fit_times, meta)
        for name, runs in (("jointcal", ours_runs), ("SCAMP", scamp_runs)):
            for f, r in runs[-1].items():
                if "error" in r:
                    print(f"\n{name} failed on {f}:\n{r['error']}")
        if args.json:
            strip = lambda runs: [{f: {k: v for k, v in r.items() if k != "per_ccd"}  # noqa
                                   for f, r in run.items()} for run in runs]
            doc = {"meta": meta, "summary": table, "floor": floor, "fit_times": fit_times,
                   "fit_speed": speed,
                   "jointcal_runs": strip(ours_runs), "scamp_runs": strip(scamp_runs),
                   "per_ccd": {"jointcal": {f: r.get("per_ccd") for f, r in
                                            ours_runs[-1].items()},
                               "scamp": {f: r.get("per_ccd") for f, r in
                                         scamp_runs[-1].items()}}}
            args.json.write_text(json.dumps(doc, indent=1))
            print(f"\nresults written to {args.json}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
