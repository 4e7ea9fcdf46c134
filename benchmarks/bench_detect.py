"""detectSources vs SExtractor (``source-extractor``) on the same simulated CCD(s).

Renders a CCD with known truth (Moffat beta=3 stars of FWHM 4 px at random sub-pixel
positions, a flat sky, Poisson + read noise, 10% of the sources extended), then runs,
interleaved, ``--repeat`` times:

- ``source-extractor`` (Debian package 2.25, a single-threaded build: NTHREADS is
  ignored; installed with apt-get when missing) with a variance weight map and a flag
  image, DETECT_THRESH 5, asked for the same measurements as detectSources makes, no
  more, no less: windowed positions with errors (XWIN/ERRX2WIN), windowed sky
  coordinates, four apertures (diameters 6, 12, 18, 24 = our radii 3, 6, 9, 12),
  FLUX_AUTO (its total flux, for our aperture-corrected flux_psf), local background,
  shape (A, B, THETA), size (FLUX_RADIUS), CLASS_STAR, FLAGS and IMAFLAGS_ISO;
- tractpatch's detectSources in-process (read MEF + measure + write SRC);
- the full ``detectSources.py`` command on one CCD (Python start-up, imports, registry
  and ledger included);
- with ``--nccd N`` > 1: the command once over N CCDs of the same repository against
  ``source-extractor`` run once per CCD (as users run it), per CCD;
- with ``--jobs J`` > 1 as well: ``detectSources.py -j J`` over the N CCDs against
  ``source-extractor`` run J processes at a time (both tools on J cores), per CCD.

Times are medians over the repeats, wall and CPU (user+sys: our process's
``process_time`` in-process, ``RUSAGE_CHILDREN`` for commands); CPU time is much less
sensitive to other load on the machine. Centroid accuracy: rms of the windowed
position error of isolated S/N > 20 stars against the truth, and the pull width. The
last line is a one-line verdict with the ratios (``>1`` means detectSources is faster):
PASS when the command over ``--nccd`` CCDs is at least as fast per CCD in wall time as
``source-extractor`` once per CCD (the in-process call when ``--nccd 1``) and the
centroid rms is no worse within its statistical error.

With ``--bad-columns N`` the CCD has N hot bad columns (2000 counts above the sky, as
real CCDs have): BAD in our mask plane, and for SExtractor a variance of 1e31 there
(above its WEIGHT_THRESH, so the pixels are left out) and flag 1 in its flag image.
Both tools then pay for their masks.

Usage: .venv/bin/python benchmarks/bench_detect.py [--nx 2048] [--ny 4176]
       [--nstars 3000] [--repeat 3] [--nccd 8] [--threads N] [--bad-columns 0]
       [--jobs 1]
"""
from __future__ import annotations

import argparse
import os
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
from astropy.wcs import WCS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tractpatch.image import Exposure, ExposureInfo, read_exposure, write_exposure  # noqa: E402
from tractpatch.sources.catalog import write_src  # noqa: E402
from tractpatch.sources.task import DetectSourcesConfig, measure_exposure  # noqa: E402

GAIN, READ_NOISE, SKY = 3.0, 4.5, 900.0
FWHM, BETA = 4.0, 3.0


def ensure_sextractor() -> str:
    """Path of ``source-extractor``; installs the Debian package when missing."""
    exe = shutil.which("source-extractor") or shutil.which("sex")
    if exe:
        return exe
    print("installing source-extractor with apt-get ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "source-extractor"], check=True)
    return shutil.which("source-extractor")


def render(nx, ny, nstars, seed=1):
    """Image, variance and truth table of a simulated CCD."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(20, nx - 21, nstars)
    y = rng.uniform(20, ny - 21, nstars)
    flux = 10 ** rng.uniform(3.0, 5.5, nstars)  # counts
    ext = rng.random(nstars) < 0.1
    alpha = FWHM / (2 * np.sqrt(2 ** (1 / BETA) - 1))
    half = 15
    off = np.arange(-half, half + 1)
    img = np.zeros((ny, nx))
    step = 2000
    for s in range(0, nstars, step):  # blocks of stars, vectorised within a block
        sl = slice(s, min(nstars, s + step))
        cx, cy = np.rint(x[sl]).astype(int), np.rint(y[sl]).astype(int)
        gx = cx[:, None, None] + off[None, None, :]
        gy = cy[:, None, None] + off[None, :, None]
        r2 = (gx - x[sl, None, None]) ** 2 + (gy - y[sl, None, None]) ** 2
        a2 = np.where(ext[sl], (3 * alpha) ** 2, alpha ** 2)[:, None, None]
        prof = (1 + r2 / a2) ** (-BETA)
        prof /= prof.sum(axis=(1, 2), keepdims=True)
        gx, gy = np.broadcast_arrays(gx, gy)
        np.add.at(img, (gy.ravel(), gx.ravel()), (prof * flux[sl, None, None]).ravel())
    model = SKY + img
    var_model = model / GAIN + (READ_NOISE / GAIN) ** 2
    noisy = model + rng.normal(0, 1, model.shape) * np.sqrt(var_model)
    sky_var = np.full(model.shape, SKY / GAIN + (READ_NOISE / GAIN) ** 2)
    truth = Table({"x": x, "y": y, "flux": flux, "extended": ext})
    return noisy.astype(np.float32), sky_var.astype(np.float32), truth


def wcs(nx, ny):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [nx / 2, ny / 2]
    w.wcs.cd = [[-0.168 / 3600, 0], [0, 0.168 / 3600]]
    return w


SEX_PARAMS = ["NUMBER", "XWIN_IMAGE", "YWIN_IMAGE", "ERRX2WIN_IMAGE", "ERRY2WIN_IMAGE",
              "ALPHAWIN_J2000", "DELTAWIN_J2000", "FLUX_APER(4)", "FLUXERR_APER(4)",
              "FLUX_AUTO", "FLUXERR_AUTO", "BACKGROUND", "A_IMAGE", "B_IMAGE",
              "THETA_IMAGE", "FLUX_RADIUS", "CLASS_STAR", "FLAGS", "IMAFLAGS_ISO"]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmd, **kw):
    """Run ``cmd``; (wall, CPU user+sys of the child) in seconds."""
    c0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - t0, _children_cpu() - c0


def run_sextractor(exe, d: Path, image: Path, weight: Path, flag: Path, tag="sex"):
    """One ``source-extractor`` run: (wall, cpu, catalog or None when not read)."""
    params = d / "bench.param"
    params.write_text("\n".join(SEX_PARAMS) + "\n")
    share = Path("/usr/share/source-extractor")
    cat = d / f"{tag}.fits"
    cmd = [exe, str(image), "-c", str(share / "default.sex"),
           "-PARAMETERS_NAME", str(params), "-FILTER_NAME", str(share / "default.conv"),
           "-STARNNW_NAME", str(share / "default.nnw"), "-CATALOG_NAME", str(cat),
           "-CATALOG_TYPE", "FITS_1.0", "-DETECT_THRESH", "5", "-ANALYSIS_THRESH", "5",
           "-DETECT_MINAREA", "5", "-WEIGHT_TYPE", "MAP_VAR", "-WEIGHT_IMAGE", str(weight),
           "-FLAG_IMAGE", str(flag), "-PHOT_APERTURES", "6,12,18,24", "-GAIN", str(GAIN),
           "-SATUR_LEVEL", "1e9", "-PIXEL_SCALE", "0.168",
           "-SEEING_FWHM", str(FWHM * 0.168), "-BACK_SIZE", "64", "-NTHREADS", "1",
           "-VERBOSE_TYPE", "QUIET", "-CHECKIMAGE_TYPE", "NONE"]
    wall, cpu = _timed(cmd, cwd=d)
    t = Table.read(cat, hdu=2 if len(fits.open(cat)) > 2 else 1)
    out = Table({"x": t["XWIN_IMAGE"] - 1.0, "y": t["YWIN_IMAGE"] - 1.0,
                 "x_err": np.sqrt(t["ERRX2WIN_IMAGE"]), "y_err": np.sqrt(t["ERRY2WIN_IMAGE"]),
                 "flux": t["FLUX_APER"][:, 3], "flux_err": t["FLUXERR_APER"][:, 3]})
    return wall, cpu, out


def run_ours_inprocess(d: Path, mef: Path, threads=None):
    c0, t0 = time.process_time(), time.perf_counter()
    exp = read_exposure(mef)
    # the exposure was read for this only, as in the command
    res = measure_exposure(exp, DetectSourcesConfig(**({"threads": threads} if threads
                                                       else {})), overwrite=True)
    write_src(d / "SRC-bench.fits", res.table, {"VISIT": 1}, exp.wcs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    t = res.table
    return wall, cpu, Table({"x": t["x"], "y": t["y"], "x_err": t["x_err"],
                             "y_err": t["y_err"], "flux": t["flux_ap_12"],
                             "flux_err": t["flux_ap_12_err"]})


def run_ours_cli(root: Path, rerun: str, ids: list[str], threads=None, jobs=1):
    cfg = ["--config", f"threads={threads}"] if threads else []
    return _timed([sys.executable, str(REPO / "bin/detectSources.py"), str(root),
                   "--rerun", rerun, "--id", *ids, *cfg, "-j", str(jobs), "--no-progress"],
                  capture_output=True)


def run_sextractor_parallel(exe, d: Path, n: int, jobs: int):
    """``n`` source-extractor runs, ``jobs`` at a time (as ``xargs -P``): (wall, cpu)."""
    from concurrent.futures import ThreadPoolExecutor

    c0, t0 = _children_cpu(), time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda j: run_sextractor(exe, d, d / "image.fits", d / "var.fits",
                                               d / "flag.fits", tag=f"par{j}"), range(n)))
    return time.perf_counter() - t0, _children_cpu() - c0


def accuracy(cat: Table, truth: Table, snr_min=20.0):
    """rms position error and pull widths of isolated point sources with S/N > snr_min."""
    tx, ty = np.asarray(truth["x"]), np.asarray(truth["y"])
    # isolation: no other true source within 12 px
    from scipy.spatial import cKDTree

    tree = cKDTree(np.c_[tx, ty])
    dist, _ = tree.query(np.c_[tx, ty], k=2)
    iso = (dist[:, 1] > 12) & ~np.asarray(truth["extended"])
    d, j = tree.query(np.c_[np.asarray(cat["x"]), np.asarray(cat["y"])])
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.asarray(cat["flux"]) / np.asarray(cat["flux_err"])
    sel = (d < 1.5) & iso[j] & (snr > snr_min) & np.isfinite(cat["x_err"])
    dx = np.asarray(cat["x"])[sel] - tx[j[sel]]
    dy = np.asarray(cat["y"])[sel] - ty[j[sel]]
    rms = float(np.sqrt(np.mean(dx ** 2 + dy ** 2) / 2))
    pulls = np.r_[dx / np.asarray(cat["x_err"])[sel], dy / np.asarray(cat["y_err"])[sel]]
    # robust width: the rms is dominated by a handful of stars 12-20 px from bright
    # galaxies (0.4-1.2 px errors, deblended), whose shifts change with any detail
    d1 = np.r_[dx, dy]
    robust = float(1.4826 * np.median(np.abs(d1 - np.median(d1))))
    return {"n": int(sel.sum()), "rms_pix": rms, "pull_std": float(np.std(pulls)),
            "n_detected": len(cat), "robust_pix": robust}


def _ratio(a, b):
    return a / b if b > 0 else float("nan")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nx", type=int, default=2048)
    p.add_argument("--ny", type=int, default=4176)
    p.add_argument("--nstars", type=int, default=3000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--nccd", type=int, default=8, help="CCDs of the multi-CCD run "
                   "(1: single-CCD runs only)")
    p.add_argument("--threads", type=int, default=None, help="detectSources config "
                   "threads (default: the config's default)")
    p.add_argument("--bad-columns", type=int, default=0, help="hot bad columns, masked "
                   "for both tools")
    p.add_argument("--jobs", type=int, default=1, help="also run the --nccd CCDs this "
                   "many at a time: detectSources.py -j N against N source-extractor "
                   "processes at a time")
    args = p.parse_args(argv)
    exe = ensure_sextractor()
    load0 = os.getloadavg()
    med = statistics.median
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        image, var, truth = render(args.nx, args.ny, args.nstars)
        w = wcs(args.nx, args.ny)
        cols = np.random.default_rng(5).choice(args.nx, args.bad_columns, replace=False)
        image[:, cols] += 2000.0
        flag = np.zeros(image.shape, np.int32)
        flag[:, cols] = 1
        sex_var = var.copy()
        sex_var[:, cols] = 1e31
        fits.PrimaryHDU(image, w.to_header()).writeto(d / "image.fits")
        fits.PrimaryHDU(sex_var, w.to_header()).writeto(d / "var.fits")
        fits.PrimaryHDU(flag, w.to_header()).writeto(d / "flag.fits")
        mask = np.zeros(image.shape, np.int32)
        mefs = []
        for k in range(max(1, args.nccd)):
            info = ExposureInfo(visit=1, ccd=k, filter="r", exptime=300.0, mjd=58800.0,
                                gain=GAIN, saturation=1e9)
            mefs.append(d / f"ccd{k}.fits")
            exp = Exposure(image=image, variance=var, mask=mask, wcs=w, info=info)
            exp.mask[:, cols] = exp.mask_planes.bitmask("BAD")
            write_exposure(mefs[-1], exp)
        root = d / "repo"
        subprocess.run([sys.executable, str(REPO / "bin/ingestImages.py"), str(root),
                        *map(str, mefs), "--no-progress"], check=True, capture_output=True)
        sex, inp, cli1, sexn, clin, sexj, clij = [], [], [], [], [], [], []
        for k in range(args.repeat):  # interleaved, so load changes hit both alike
            wall, cpu, sex_cat = run_sextractor(exe, d, d / "image.fits", d / "var.fits",
                                                d / "flag.fits")
            sex.append((wall, cpu))
            wall, cpu, ours = run_ours_inprocess(d, mefs[0], args.threads)
            inp.append((wall, cpu))
            cli1.append(run_ours_cli(root, f"one{k}", ["visit=1", "ccd=0"], args.threads))
            if args.nccd > 1:
                runs = [run_sextractor(exe, d, d / "image.fits", d / "var.fits",
                                       d / "flag.fits", tag=f"sex{j}")[:2]
                        for j in range(args.nccd)]
                sexn.append(tuple(sum(r[i] for r in runs) / args.nccd for i in (0, 1)))
                wall, cpu = run_ours_cli(root, f"all{k}", ["visit=1"], args.threads)
                clin.append((wall / args.nccd, cpu / args.nccd))
            if args.nccd > 1 and args.jobs > 1:
                wall, cpu = run_sextractor_parallel(exe, d, args.nccd, args.jobs)
                sexj.append((wall / args.nccd, cpu / args.nccd))
                wall, cpu = run_ours_cli(root, f"par{k}", ["visit=1"], args.threads,
                                         args.jobs)
                clij.append((wall / args.nccd, cpu / args.nccd))
        a_sex, a_ours = accuracy(sex_cat, truth), accuracy(ours, truth)
    load1 = os.getloadavg()

    def mw(v):
        return med([t[0] for t in v]), med([t[1] for t in v])

    s_w, s_c = mw(sex)
    threads = args.threads or DetectSourcesConfig().threads
    print(f"CCD {args.nx}x{args.ny}, {args.nstars} sources (10% extended), "
          f"{args.bad_columns} bad columns, Moffat "
          f"beta={BETA} FWHM={FWHM} px; detectSources threads={threads}; "
          f"median of {args.repeat}; load average "
          f"{load0[0]:.2f} -> {load1[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    print(f"  {'':34s} {'wall s':>7s} {'CPU s':>7s}  SExtractor/ours: wall  CPU")
    print(f"  {'source-extractor (1 thread)':34s} {s_w:7.2f} {s_c:7.2f}  detected "
          f"{a_sex['n_detected']}")
    rows = [("detectSources in-process", mw(inp)),
            ("detectSources.py, 1 CCD", mw(cli1))]
    if args.nccd > 1:
        n_w, n_c = mw(sexn)
        print(f"  {f'source-extractor per CCD, {args.nccd} runs':34s} {n_w:7.2f} {n_c:7.2f}")
        rows.append((f"detectSources.py, {args.nccd} CCDs, per CCD", mw(clin)))
    refs = {}
    if sexj:
        j_w, j_c = mw(sexj)
        print(f"  {f'source-extractor per CCD, {args.jobs} at a time':34s} {j_w:7.2f} "
              f"{j_c:7.2f}")
        name = f"detectSources.py -j {args.jobs}, per CCD"
        rows.append((name, mw(clij)))
        refs[name] = (j_w, j_c)
    ratios = {}
    for name, (w_, c_) in rows:
        ref_w, ref_c = refs.get(name) or ((n_w, n_c) if "CCDs" in name else (s_w, s_c))
        ratios[name] = (_ratio(ref_w, w_), _ratio(ref_c, c_))
        print(f"  {name:34s} {w_:7.2f} {c_:7.2f}  {ratios[name][0]:19.2f} "
              f"{ratios[name][1]:5.2f}")
    print(f"  centroid rms (isolated stars, S/N>20): SExtractor XWIN {a_sex['rms_pix']:.4f} px "
          f"(n={a_sex['n']}), ours {a_ours['rms_pix']:.4f} px (n={a_ours['n']}); pull std "
          f"SExtractor {a_sex['pull_std']:.2f}, ours {a_ours['pull_std']:.2f}")
    print(f"  centroid robust sigma (1.4826 MAD, same stars): SExtractor "
          f"{a_sex['robust_pix']:.4f} px, ours {a_ours['robust_pix']:.4f} px (ratio "
          f"{a_ours['robust_pix'] / a_sex['robust_pix']:.3f}; not in the verdict)")
    rms_ratio = a_ours["rms_pix"] / a_sex["rms_pix"]
    # "as fast per CCD": the command over the CCDs of a visit, against source-extractor
    # run once per CCD, is how both are run; without --nccd the in-process call (no
    # start-up, but each repeat is a cold call in a process that ran the others)
    key = f"detectSources.py, {args.nccd} CCDs, per CCD"
    speed = ratios[key if key in ratios else "detectSources in-process"][0]
    # "no worse": within the statistical error of the rms (1/sqrt(2n) ~ 3% here)
    tol = 1.0 + 1.0 / np.sqrt(2 * max(1, min(a_sex["n"], a_ours["n"])))
    ok = speed >= 1.0 and rms_ratio <= tol
    parts = [f"{name} {r[0]:.2f}x wall {r[1]:.2f}x CPU" for name, r in ratios.items()]
    print(f"VERDICT {'PASS' if ok else 'FAIL'}: SExtractor/detectSources time ratios "
          f"(>1: ours faster): {'; '.join(parts)}; centroid rms ratio ours/SExtractor "
          f"{rms_ratio:.3f} (no worse: <= {tol:.3f}); load {load1[0]:.1f}")


if __name__ == "__main__":
    main()
