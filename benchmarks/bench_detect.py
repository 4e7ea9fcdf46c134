"""detectSources vs SExtractor (``source-extractor``) on the same simulated CCD.

Renders a CCD with known truth (Moffat beta=3 stars of FWHM 4 px at random sub-pixel
positions, a flat sky, Poisson + read noise, 10% of the sources extended), then runs

- ``source-extractor`` (Debian package; installed with apt-get when missing) with a
  weight map, DETECT_THRESH 5, windowed positions (XWIN_IMAGE) and apertures, and
- tractpatch's detectSources: in-process (read MEF + measure + write SRC), and the
  full ``detectSources.py`` command on a repository holding the same CCD,

and reports wall times (best of N) and centroid accuracy against the truth (rms of the
windowed position error of isolated S/N > 20 stars, and the pull width) as ratios.

Usage: .venv/bin/python benchmarks/bench_detect.py [--nx 2048] [--ny 4176]
       [--nstars 3000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import shutil
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


def run_sextractor(exe, d: Path, image: Path, weight: Path):
    params = d / "bench.param"
    params.write_text("\n".join(["NUMBER", "X_IMAGE", "Y_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE",
                                 "ERRX2WIN_IMAGE", "ERRY2WIN_IMAGE", "FLUX_APER(2)",
                                 "FLUXERR_APER(2)", "FLUX_RADIUS", "CLASS_STAR",
                                 "FLAGS"]) + "\n")
    share = Path("/usr/share/source-extractor")
    cat = d / "sex.fits"
    cmd = [exe, str(image), "-c", str(share / "default.sex"),
           "-PARAMETERS_NAME", str(params), "-FILTER_NAME", str(share / "default.conv"),
           "-STARNNW_NAME", str(share / "default.nnw"), "-CATALOG_NAME", str(cat),
           "-CATALOG_TYPE", "FITS_1.0", "-DETECT_THRESH", "5", "-ANALYSIS_THRESH", "5",
           "-DETECT_MINAREA", "5", "-WEIGHT_TYPE", "MAP_VAR", "-WEIGHT_IMAGE", str(weight),
           "-PHOT_APERTURES", "12,24", "-GAIN", str(GAIN), "-SATUR_LEVEL", "1e9",
           "-PIXEL_SCALE", "0.168", "-SEEING_FWHM", str(FWHM * 0.168),
           "-BACK_SIZE", "64", "-VERBOSE_TYPE", "QUIET", "-CHECKIMAGE_TYPE", "NONE"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=d)
    dt = time.perf_counter() - t0
    t = Table.read(cat, hdu=2 if len(fits.open(cat)) > 2 else 1)
    out = Table({"x": t["XWIN_IMAGE"] - 1.0, "y": t["YWIN_IMAGE"] - 1.0,
                 "x_err": np.sqrt(t["ERRX2WIN_IMAGE"]), "y_err": np.sqrt(t["ERRY2WIN_IMAGE"]),
                 "flux": t["FLUX_APER"][:, 1], "flux_err": t["FLUXERR_APER"][:, 1]})
    return dt, out


def run_ours_inprocess(d: Path, mef: Path):
    t0 = time.perf_counter()
    exp = read_exposure(mef)
    res = measure_exposure(exp, DetectSourcesConfig())
    write_src(d / "SRC-bench.fits", res.table, {"VISIT": 1}, exp.wcs)
    dt = time.perf_counter() - t0
    t = res.table
    return dt, Table({"x": t["x"], "y": t["y"], "x_err": t["x_err"], "y_err": t["y_err"],
                      "flux": t["flux_ap_12"], "flux_err": t["flux_ap_12_err"]})


def run_ours_cli(d: Path, mef: Path, k: int):
    root = d / "repo"
    if not root.exists():
        subprocess.run([sys.executable, str(REPO / "bin/ingestImages.py"), str(root),
                        str(mef), "--no-progress"], check=True, capture_output=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "bin/detectSources.py"), str(root),
                    "--rerun", f"b{k}", "--id", "visit=1", "--no-progress"], check=True,
                   capture_output=True)
    return time.perf_counter() - t0


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
    return {"n": int(sel.sum()), "rms_pix": rms, "pull_std": float(np.std(pulls)),
            "n_detected": len(cat)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nx", type=int, default=2048)
    p.add_argument("--ny", type=int, default=4176)
    p.add_argument("--nstars", type=int, default=3000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    exe = ensure_sextractor()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        image, var, truth = render(args.nx, args.ny, args.nstars)
        w = wcs(args.nx, args.ny)
        fits.PrimaryHDU(image, w.to_header()).writeto(d / "image.fits")
        fits.PrimaryHDU(var, w.to_header()).writeto(d / "var.fits")
        info = ExposureInfo(visit=1, ccd=0, filter="r", exptime=300.0, mjd=58800.0,
                            gain=GAIN, saturation=1e9)
        write_exposure(d / "ccd.fits", Exposure(image=image, variance=var, wcs=w,
                                                info=info))
        t_sex, t_in, t_cli = [], [], []
        for k in range(args.repeat):
            dt, sex = run_sextractor(exe, d, d / "image.fits", d / "var.fits")
            t_sex.append(dt)
            dt, ours = run_ours_inprocess(d, d / "ccd.fits")
            t_in.append(dt)
            t_cli.append(run_ours_cli(d, d / "ccd.fits", k))
        a_sex, a_ours = accuracy(sex, truth), accuracy(ours, truth)
    print(f"CCD {args.nx}x{args.ny}, {args.nstars} sources (10% extended), Moffat "
          f"beta={BETA} FWHM={FWHM} px; best of {args.repeat}")
    print(f"  source-extractor          : {min(t_sex):7.2f} s  detected {a_sex['n_detected']}")
    print(f"  detectSources in-process  : {min(t_in):7.2f} s  detected {a_ours['n_detected']}"
          f"   ratio to SExtractor {min(t_in) / min(t_sex):.2f}")
    print(f"  detectSources.py command  : {min(t_cli):7.2f} s  (startup, registry, ledger "
          f"included)   ratio {min(t_cli) / min(t_sex):.2f}")
    print(f"  centroid rms (isolated stars, S/N>20): SExtractor XWIN {a_sex['rms_pix']:.4f} px "
          f"(n={a_sex['n']}), ours {a_ours['rms_pix']:.4f} px (n={a_ours['n']}), "
          f"ratio {a_ours['rms_pix'] / a_sex['rms_pix']:.2f}")
    print(f"  centroid pull std: SExtractor {a_sex['pull_std']:.2f}, ours "
          f"{a_ours['pull_std']:.2f}")


if __name__ == "__main__":
    main()
