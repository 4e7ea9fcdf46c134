#!/usr/bin/env python3
"""Scale benchmark of the jointcal fit on synthetic catalogs of HSC size.

Default: 30 visits x 104 CCDs (13 x 8 grid of 2048 x 4176 pixels, 0.168"/pixel) x ~300
stars per CCD, about 1 M measurements; the issue's budget is 2 minutes and 8 GB on 2
cores. Prints the generation and fit wall and CPU times, the peak memory, the load
average, the accuracy of the fitted mappings and calibrations against the synthetic
truth (with the noise floor) and, when the visits span long enough for proper motions to
be fitted (``--spacing 30``: 2.4 years), the recovered motions against the true ones.

    python benchmarks/bench_jointcal_scale.py [--visits 30] [--stars-per-ccd 300]
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import time

# The Schur-complement products are many small GEMMs: OpenBLAS threads cost more than
# they save there (measured: 2x slower with 2 threads on a shared 2-core machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "2")

import numpy as np  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--visits", type=int, default=30)
    p.add_argument("--grid", default="13x8", help="CCD grid NXxNY (HSC: 104 = 13x8)")
    p.add_argument("--stars-per-ccd", type=int, default=300)
    p.add_argument("--model", default="constrained", choices=["constrained", "simple"])
    p.add_argument("--spacing", type=float, default=1.0, help="days between visits; "
                   "above properMotionMinSpan (0.5 yr) in all, the fitted stars seen on "
                   "enough nights get proper-motion parameters")
    p.add_argument("--config", action="append", default=[], metavar="NAME=VALUE",
                   help="JointcalConfig override (e.g. properMotionMinSpan=100 to fit "
                   "no proper motions)")
    p.add_argument("--score-ccds", type=int, default=200, help="CCD images scored")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(relativeCreated)8.0f ms %(message)s")
    from tractpatch.jointcal.config import JointcalConfig
    from tractpatch.jointcal.solver import fit_jointcal
    from tractpatch.jointcal.synthetic import make_synthetic

    gx, gy = map(int, args.grid.lower().split("x"))
    t0 = time.perf_counter()
    det, images, ref, truth = make_synthetic(
        n_visits=args.visits, ccd_grid=(gx, gy), nx=2048, ny=4176, pixel_scale=0.168,
        stars_per_ccd=args.stars_per_ccd, dither=120.0, k=1.0e-9, seed=7,
        visit_spacing_days=args.spacing)
    t_gen = time.perf_counter() - t0
    print(f"generated {len(det)} detections on {len(images)} CCD images, {len(ref)} "
          f"reference stars in {t_gen:.1f} s")
    over = dict(kv.split("=", 1) for kv in args.config)
    cfg = JointcalConfig(astrometryModel=args.model, photometryModel=args.model, **over)
    t0 = time.perf_counter()
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    res = fit_jointcal(det, images, ref, cfg)
    t_fit = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_fit = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    rng = np.random.default_rng(0)
    pick = rng.choice(len(res.images), min(args.score_ccds, len(res.images)), replace=False)
    mas, mmag, offs = truth.score(res, pick)
    print(f"jointcal fit ({args.model}): {res.counts['n_measurements']} measurements, "
          f"{res.counts['prepared_fittedStars']} fitted stars, {len(res.images)} CCD "
          f"images: {t_fit:.1f} s wall, {cpu_fit:.1f} s CPU, peak RSS {rss:.2f} GB, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"accuracy vs truth over {len(pick)} CCD images: astrometry RMS median "
          f"{np.median(mas):.2f} worst {np.max(mas):.2f} mas; calibration RMS median "
          f"{np.median(mmag):.2f} worst {np.max(mmag):.2f} mmag (mean offset "
          f"{np.mean(offs):+.2f} mmag)")
    print("noise floor: centroids >= 0.01 px (1.7 mas) per measurement, reference "
          "positions 2 mas, reference fluxes 1 %, photometric pedestal 2 mmag")
    _print_motions(res, truth)
    ok = t_fit + t_gen < 120 and rss < 8
    print(f"verdict: {t_fit + t_gen:.1f} s / 120 s = {(t_fit + t_gen) / 120:.2f} of the "
          f"time budget, {rss:.2f} / 8 GB = {rss / 8:.2f} of the memory budget; astrometry "
          f"median {np.median(mas):.2f} mas, calibration median {np.median(mmag):.2f} mmag; "
          f"budget (2 min, 8 GB) {'met' if ok else 'NOT met'}")


def _print_motions(res, truth):
    """Fitted proper motions against the truth, for fitted stars matched to true stars."""
    from scipy.spatial import cKDTree

    from tractpatch.jointcal.tangent import project

    K = len(res.stars_xy) // 2
    n_pm = int(res.pm_fitted.sum()) if res.pm_fitted is not None else 0
    if n_pm == 0:
        print("proper motions: none fitted (visits span "
              f"{np.ptp(res.meas.dt):.2f} yr); fitted stars keep the catalog's or none")
        return
    tx, ty = project(truth.star_ra, truth.star_dec, *res.tangent)
    _, j = cKDTree(np.column_stack([tx, ty])).query(
        np.column_stack([res.stars_xy[:K], res.stars_xy[K:]]))
    err = np.hypot(res.stars_pm[:K] * 1000 - truth.star_pmra[j],
                   res.stars_pm[K:] * 1000 - truth.star_pmdec[j])
    true = np.hypot(truth.star_pmra[j], truth.star_pmdec[j])
    for name, sel in (("not in the reference catalog", res.pm_fitted & (res.ref_index < 0)),
                      ("reference stars", res.pm_fitted & (res.ref_index >= 0)),
                      ("not fitted (too few epochs)", ~res.pm_fitted)):
        if sel.any():
            print(f"proper motions, {name}: {int(sel.sum())} stars, |fitted - true| "
                  f"median {np.median(err[sel]):.2f} p90 {np.percentile(err[sel], 90):.2f} "
                  f"mas/yr (true |pm| median {np.median(true[sel]):.2f} mas/yr)")


if __name__ == "__main__":
    main()
