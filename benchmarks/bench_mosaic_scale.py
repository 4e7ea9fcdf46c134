#!/usr/bin/env python3
"""Scale benchmark of the mosaic fit (meas_mosaic's models) on synthetic HSC catalogs.

The same synthetic survey as bench_jointcal_scale.py (30 visits x 104 CCDs of 2048 x 4176
pixels x ~300 stars per CCD, about 940 k measurements; the budget is 2 minutes and 8 GB
on 2 cores). Each run is a child process, so its CPU time (user + sys) and peak memory
are its own; solvers are interleaved over ``--repeat`` rounds and medians printed:

- ``mosaic``: mosaic.py's fit (per-image dense Jacobian blocks, stars eliminated by BLAS);
- ``mosaic-sparse``: the same models on jointcal's scipy.sparse normal equations (the
  assembly before the block version; slow at scale, skipped above ``--sparse-max``);
- ``jointcal``: jointcal's constrained models, the peer solver on the same data.

    python benchmarks/bench_mosaic_scale.py [--visits 30] [--grid 13x8]
        [--stars-per-ccd 300] [--solvers mosaic,jointcal] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time

# Small and medium GEMMs: OpenBLAS threads cost more than they save on 2 shared cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "2")

import numpy as np  # noqa: E402


def _child(args) -> dict:
    """One fit in this process: generation, fit, accuracy against the truth."""
    from tractpatch.jointcal.config import JointcalConfig, MosaicConfig
    from tractpatch.jointcal.mosaic_solver import fit_mosaic
    from tractpatch.jointcal.solver import fit_jointcal
    from tractpatch.jointcal.synthetic import make_synthetic

    gx, gy = map(int, args.grid.lower().split("x"))
    t0 = time.perf_counter()
    det, images, ref, truth = make_synthetic(
        n_visits=args.visits, ccd_grid=(gx, gy), nx=2048, ny=4176, pixel_scale=0.168,
        stars_per_ccd=args.stars_per_ccd, dither=120.0, k=1.0e-9, seed=7,
        visit_spacing_days=args.spacing)
    t_gen = time.perf_counter() - t0
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    t0 = time.perf_counter()
    if args.child == "jointcal":
        res = fit_jointcal(det, images, ref, JointcalConfig())
    else:
        cfg = MosaicConfig(fittingOrder=args.order, fluxFitOrder=args.flux_order)
        res = fit_mosaic(det, images, ref, cfg, assembly="sparse"
                         if args.child == "mosaic-sparse" else "blocks")
    t_fit = time.perf_counter() - t0
    cpu_fit = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu0
    rng = np.random.default_rng(0)
    pick = rng.choice(len(res.images), min(args.score_ccds, len(res.images)), replace=False)
    mas, mmag, _ = truth.score(res, pick)
    return {"solver": args.child, "n_meas": res.counts["n_measurements"],
            "n_images": len(res.images), "gen_s": t_gen, "fit_s": t_fit,
            "fit_cpu_s": cpu_fit,
            "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2,
            "mas_median": float(np.median(mas)), "mas_worst": float(np.max(mas)),
            "mmag_median": float(np.median(mmag)), "mmag_worst": float(np.max(mmag)),
            "astro_iter": res.astro_fit.n_iter if res.astro_fit else 0}


def _run_child(argv, solver, timeout):
    """Run one fit in a child process: its result, wall and CPU time (None: timed out)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, __file__, *argv, "--child", solver],
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t0
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"{solver} failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["child_wall_s"] = wall
    out["child_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--visits", type=int, default=30)
    p.add_argument("--grid", default="13x8", help="CCD grid NXxNY (HSC: 104 = 13x8)")
    p.add_argument("--stars-per-ccd", type=int, default=300)
    p.add_argument("--order", type=int, default=9, help="fittingOrder")
    p.add_argument("--flux-order", type=int, default=7, help="fluxFitOrder")
    p.add_argument("--spacing", type=float, default=1.0, help="days between visits")
    p.add_argument("--score-ccds", type=int, default=200, help="CCD images scored")
    p.add_argument("--solvers", default="mosaic,jointcal",
                   help="comma list of mosaic, mosaic-sparse, jointcal (interleaved)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--timeout", type=float, default=600, help="seconds per child run")
    p.add_argument("--sparse-max", type=int, default=150_000, help="detections above which "
                   "mosaic-sparse is not run (it did not finish 100 k in 300 s)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(_child(args)))
        return
    argv = [a for a in (sys.argv[1:] if argv is None else argv)]
    drop = {"--solvers", "--repeat", "--timeout", "--sparse-max"}
    child_argv, skip = [], False
    for a in argv:  # the survey options only
        if skip:
            skip = False
            continue
        if a.split("=")[0] in drop:
            skip = "=" not in a
            continue
        child_argv.append(a)
    solvers = args.solvers.split(",")
    gx, gy = map(int, args.grid.lower().split("x"))
    approx = args.visits * gx * gy * args.stars_per_ccd
    if approx > args.sparse_max and "mosaic-sparse" in solvers:
        print(f"mosaic-sparse skipped: ~{approx} detections > --sparse-max {args.sparse_max}")
        solvers.remove("mosaic-sparse")
    results = {s: [] for s in solvers}
    for rnd in range(args.repeat):
        for s in solvers:
            out, wall = _run_child(child_argv, s, args.timeout)
            if out is None:
                print(f"round {rnd + 1} {s}: did not finish in {args.timeout:.0f} s")
                results[s].append(None)
                continue
            print(f"round {rnd + 1} {s}: {out['n_meas']} measurements on {out['n_images']} "
                  f"CCD images; generation {out['gen_s']:.1f} s, fit {out['fit_s']:.1f} s "
                  f"wall / {out['fit_cpu_s']:.1f} s CPU, process {wall:.1f} s wall / "
                  f"{out['child_cpu_s']:.1f} s CPU, peak RSS {out['rss_gb']:.2f} GB; vs "
                  f"truth {out['mas_median']:.2f} (worst {out['mas_worst']:.2f}) mas, "
                  f"{out['mmag_median']:.2f} (worst {out['mmag_worst']:.2f}) mmag; load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
            results[s].append(out)
    med = {}
    for s, rs in results.items():
        ok = [r for r in rs if r is not None]
        if not ok:
            continue
        med[s] = {k: float(np.median([r[k] for r in ok])) for k in
                  ("fit_s", "fit_cpu_s", "gen_s", "rss_gb", "mas_median", "mas_worst",
                   "mmag_median", "mmag_worst")}
        m = med[s]
        print(f"median {s} over {len(ok)}: fit {m['fit_s']:.1f} s wall / {m['fit_cpu_s']:.1f}"
              f" s CPU (+ generation {m['gen_s']:.1f} s), peak RSS {m['rss_gb']:.2f} GB, "
              f"{m['mas_median']:.2f} / {m['mas_worst']:.2f} mas, {m['mmag_median']:.2f} / "
              f"{m['mmag_worst']:.2f} mmag (median / worst CCD)")
    print(f"load average {os.getloadavg()}")
    if "mosaic" in med:
        m = med["mosaic"]
        ok = m["fit_s"] + m["gen_s"] < 120 and m["rss_gb"] < 8
        ratios = []
        for peer in ("jointcal", "mosaic-sparse"):
            if peer in med:
                q = med[peer]
                ratios.append(f"{peer}/mosaic time {q['fit_s'] / m['fit_s']:.2f} wall, "
                              f"{q['fit_cpu_s'] / m['fit_cpu_s']:.2f} CPU; astrometry error "
                              f"{q['mas_median'] / m['mas_median']:.2f}, photometry error "
                              f"{q['mmag_median'] / m['mmag_median']:.2f}")
        print(f"VERDICT mosaic: fit {m['fit_s']:.1f} s + generation {m['gen_s']:.1f} s, "
              f"{m['rss_gb']:.2f} GB: budget (2 min, 8 GB) {'met' if ok else 'NOT met'}"
              + ("; " + "; ".join(ratios) if ratios else ""))


if __name__ == "__main__":
    main()
