"""Diagnostic plots over all visits of a joint fit: DFlux2D, ResFlux, MdM, PosDPos,
ResPosScatter.

Rejected measurements are left out of every plot. Big data: scatter plots draw a seeded
random subsample of at most ``MAX_POINTS`` points (the histograms, binned medians, hexbin
densities and the quoted sigmas use every measurement).
"""
from __future__ import annotations

import numpy as np

from .datafiles import clipped_stats
from .fitdata import FitDiagnostics
from .plots_visit import (INT_COLOR, REF_COLOR, draw_ccds, new_figure, save_figure,
                          subsample)

MAX_POINTS = 20000
MAX_PANELS = 30


def _robust_limits(values, nsig: float = 5.0, floor: float = 1e-6):
    """Symmetric-ish plot limits: median ± nsig robust sigmas of the finite values."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return -1.0, 1.0
    med = np.median(v)
    sig = 1.4826 * np.median(np.abs(v - med))
    sig = max(sig, np.std(v) * 0.1, floor)
    return med - nsig * sig, med + nsig * sig


def _group_summary(index, values, n_groups):
    """Median and robust sigma (1.4826 MAD) of ``values`` within groups (NaN if empty)."""
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(n_groups + 1))
    med = np.full(n_groups, np.nan)
    sig = np.full(n_groups, np.nan)
    for g in range(n_groups):  # one vectorised median per group, not per measurement
        v = values[order[bounds[g]:bounds[g + 1]]]
        if v.size:
            med[g] = np.median(v)
            sig[g] = 1.4826 * np.median(np.abs(v - med[g]))
    return med, sig


def _binned_median(x, y, nbins: int = 20):
    """Bin centres and median of ``y`` in equal-count bins of ``x`` (at least 5 per bin)."""
    if x.size < 10:
        return np.array([]), np.array([])
    nbins = max(2, min(nbins, x.size // 5))
    edges = np.unique(np.quantile(x, np.linspace(0, 1, nbins + 1)))
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, edges.size - 2)
    centres, meds = [], []
    order = np.argsort(idx, kind="stable")
    bounds = np.searchsorted(idx[order], np.arange(edges.size))
    for b in range(edges.size - 1):
        v = order[bounds[b]:bounds[b + 1]]
        if v.size:
            centres.append(np.median(x[v]))
            meds.append(np.median(y[v]))
    return np.array(centres), np.array(meds)


def visit_flux_maps(data: FitDiagnostics) -> np.ndarray:
    """Each visit's total flux correction (visit scale × map) in % from the visit mean.

    The per-CCD constants are shared by all visits and cancel in the difference.
    """
    total = data.visit_scale[:, None, None] * data.flux_corr
    if total.shape[0] == 0:
        return total
    # grid points outside every CCD are NaN in all visits: no warning for those
    count = np.isfinite(total).sum(axis=0)
    mean = np.where(count > 0, np.nansum(total, axis=0) / np.maximum(count, 1), np.nan)
    with np.errstate(invalid="ignore"):
        return 100.0 * (total / mean - 1.0)


def plot_dflux2d(data: FitDiagnostics, path):
    """``DFlux2D.png``: each visit's flux difference from the mean over visits (%)."""
    maps = visit_flux_maps(data)
    nv = data.visit_id.size
    shown = min(nv, MAX_PANELS)
    ncol = int(np.ceil(np.sqrt(shown))) if shown else 1
    nrow = int(np.ceil(shown / ncol)) if shown else 1
    fig = new_figure(min(4.0 + 2.6 * ncol, 16.0), min(1.6 + 2.4 * nrow, 16.0))
    finite = maps[:shown][np.isfinite(maps[:shown])]
    lim = max(float(np.max(np.abs(finite))) if finite.size else 0.0, 1e-3)
    axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
    mesh = None
    for i, ax in enumerate(axes.ravel()):
        if i >= shown:
            ax.set_visible(False)
            continue
        mesh = ax.pcolormesh(data.grid_fx, data.grid_fy, maps[i], cmap="RdBu_r",
                             vmin=-lim, vmax=lim, shading="nearest")
        draw_ccds(ax, data, labels=False)
        ax.set_title(f"visit {data.visit_id[i]}", fontsize=8)
        ax.tick_params(labelsize=7)
        if i % ncol:
            ax.set_ylabel("")
        if i < shown - ncol:
            ax.set_xlabel("")
        ax.xaxis.label.set_size(7)
        ax.yaxis.label.set_size(7)
    if mesh is not None:
        fig.colorbar(mesh, ax=axes.ravel().tolist(),
                     label="flux correction − mean over visits (%)", shrink=0.9)
    more = f" (first {shown} of {nv} visits)" if nv > shown else ""
    fig.suptitle(f"DFlux2D: visit flux difference from the mean over visits{more}\n"
                 f"{data.label}", fontsize=10)
    return save_figure(fig, path)


def plot_res_flux(data: FitDiagnostics, path):
    """``ResFlux.png``: magnitude residuals: histogram, vs radius, per visit, per CCD."""
    ok = ~data.rejected & np.isfinite(data.dmag)
    dm = 1000.0 * data.dmag[ok]  # mmag
    ref = data.is_ref[ok]
    fig = new_figure(12.0, 9.0)
    (a0, a1), (a2, a3) = fig.subplots(2, 2)
    lo, hi = _robust_limits(dm)
    bins = np.linspace(lo, hi, 61)
    for mask, color, name in ((np.ones_like(ref), "k", "all"), (ref, REF_COLOR, "vs reference"),
                              (~ref, INT_COLOR, "internal")):
        _, s, _ = clipped_stats(dm[mask])
        a0.hist(dm[mask], bins=bins, histtype="step", color=color, lw=1.3,
                label=f"{name}: n={int(mask.sum())}, σ={s:.1f} mmag")
    a0.set_xlabel("Δmag (mmag)")
    a0.set_ylabel("measurements")
    a0.set_title("histogram (3σ-clipped σ)", fontsize=9)
    a0.legend(fontsize=7)

    r = np.hypot(data.fx[ok], data.fy[ok])
    if dm.size:
        hb = a1.hexbin(r, dm, gridsize=50, bins="log", mincnt=1, cmap="Greys",
                       extent=(0, max(r.max(), 1e-6), lo, hi))
        fig.colorbar(hb, ax=a1, label="measurements per cell")
    ci = data.ccd_index()[ok]
    nc = data.ccd_id.size
    med_c, sig_c = _group_summary(ci, dm, nc)
    r_c = np.hypot(data.ccd_fx, data.ccd_fy)
    sc = a1.scatter(r_c, med_c, c=data.ccd_id, cmap="tab20", s=18, edgecolors="k",
                    linewidths=0.4, label="per-CCD median", zorder=3)
    fig.colorbar(sc, ax=a1, label="CCD ID", pad=0.01)
    a1.set_ylim(lo, hi)
    a1.set_xlabel("focal-plane radius (deg)")
    a1.set_ylabel("Δmag (mmag)")
    a1.set_title("vs radius (density; dots: per-CCD median at CCD centre)", fontsize=9)
    a1.legend(fontsize=7, loc="upper left")

    for ax, idx, ids, name in ((a2, data.visit_index()[ok], data.visit_id, "visit"),
                               (a3, ci, data.ccd_id, "CCD")):
        med, sig = _group_summary(idx, dm, ids.size)
        pos = np.arange(ids.size)
        ax.errorbar(pos, med, yerr=sig, fmt="o", ms=3, color="k", ecolor="0.6",
                    label="median ± robust σ")
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_xlabel(f"{name} (index; ID in tick labels)")
        ax.set_ylabel("Δmag (mmag)")
        step = max(1, ids.size // 20)
        ax.set_xticks(pos[::step])
        ax.set_xticklabels([str(v) for v in ids[::step]], rotation=60, fontsize=7)
        ax.set_title(f"per {name}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"ResFlux: magnitude residuals (measured − reference or star mean)\n"
                 f"{data.label}", fontsize=10)
    # fixed margins: tight_layout would cost as much as the drawing itself
    fig.subplots_adjust(left=0.07, right=0.97, bottom=0.1, top=0.88, wspace=0.3, hspace=0.42)
    return save_figure(fig, path)


def plot_mdm(data: FitDiagnostics, path):
    """``MdM.png``: magnitude difference against magnitude.

    Reference-matched measurements minus the reference in one colour, the others minus
    their star's mean in another; lines are running medians.
    """
    ok = ~data.rejected & np.isfinite(data.dmag) & np.isfinite(data.mag)
    fig = new_figure(9.0, 6.5)
    ax = fig.add_subplot(111)
    lo, hi = _robust_limits(data.dmag[ok], nsig=8.0)
    for mask, color, name in ((ok & data.is_ref, REF_COLOR, "reference-matched − reference"),
                              (ok & ~data.is_ref, INT_COLOR, "internal − star mean")):
        sel = np.flatnonzero(mask)
        pick = sel[subsample(sel.size, MAX_POINTS // 2, seed=1)]
        ax.scatter(data.mag[pick], data.dmag[pick], s=2, color=color, alpha=0.4,
                   rasterized=True, label=f"{name} ({sel.size})")
        bx, by = _binned_median(data.mag[sel], data.dmag[sel])
        ax.plot(bx, by, color=color, lw=2)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("calibrated magnitude (AB mag)")
    ax.set_ylabel("Δmag (mag)")
    ax.legend(fontsize=8, markerscale=5, loc="upper left")
    ax.set_title(f"MdM: magnitude residual vs magnitude (lines: running medians)\n"
                 f"{data.label}", fontsize=10)
    return save_figure(fig, path)


def plot_pos_dpos(data: FitDiagnostics, path):
    """``PosDPos.png``: dx, dy residuals against focal-plane x, y (density + medians)."""
    ok = ~data.rejected
    fig = new_figure(12.0, 9.0)
    axes = fig.subplots(2, 2)
    lim = _robust_limits(np.concatenate([data.dx[ok], data.dy[ok]]))
    for row, (dname, d) in enumerate((("dx", data.dx[ok]), ("dy", data.dy[ok]))):
        for col, (pname, p) in enumerate((("x", data.fx[ok]), ("y", data.fy[ok]))):
            ax = axes[row, col]
            if d.size:
                hb = ax.hexbin(p, d, gridsize=60, bins="log", mincnt=1, cmap="viridis",
                               extent=(p.min(), max(p.max(), p.min() + 1e-6), *lim))
                fig.colorbar(hb, ax=ax, label="measurements per cell")
            bx, by = _binned_median(p, d, 25)
            ax.plot(bx, by, color="r", lw=1.5, label="running median")
            ax.axhline(0, color="k", lw=0.5)
            ax.set_ylim(*lim)
            ax.set_xlabel(f"focal-plane {pname} (deg)")
            ax.set_ylabel(f"{dname} (mas)")
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"PosDPos: astrometric residuals (measured − model) vs focal-plane position"
                 f"\n{data.label}", fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.07, top=0.9, wspace=0.25, hspace=0.25)
    return save_figure(fig, path)


def plot_res_pos_scatter(data: FitDiagnostics, stats: dict, path):
    """``ResPosScatter.png``: dx vs dy with marginal histograms and clipped sigmas.

    ``stats`` is :func:`~tractpatch.diagnostics.datafiles.residual_stats` of ``data``, whose
    ``clipped`` sigmas are quoted (all, against the reference, internal).
    """
    ok = ~data.rejected
    fig = new_figure(8.5, 8.5)
    gs = fig.add_gridspec(2, 2, width_ratios=(4, 1.3), height_ratios=(1.3, 4),
                          wspace=0.05, hspace=0.05)
    ax = fig.add_subplot(gs[1, 0])
    hx = fig.add_subplot(gs[0, 0], sharex=ax)
    hy = fig.add_subplot(gs[1, 1], sharey=ax)
    sig_all = stats["clipped"]["all"]
    s = np.nanmax([sig_all["sigma_dx"], sig_all["sigma_dy"], 1e-3])
    lim = (-6 * s, 6 * s)
    bins = np.linspace(*lim, 61)
    groups = (("all", ok, "k"), ("ref", ok & data.is_ref, REF_COLOR),
              ("internal", ok & ~data.is_ref, INT_COLOR))
    for name, mask, color in groups[1:]:
        sel = np.flatnonzero(mask)
        pick = sel[subsample(sel.size, MAX_POINTS // 2, seed=2)]
        ax.scatter(data.dx[pick], data.dy[pick], s=2, color=color, alpha=0.35,
                   rasterized=True)
    for name, mask, color in groups:
        c = stats["clipped"][name]
        label = (f"{'vs reference' if name == 'ref' else name}: n={c['n']}, "
                 f"σx={c['sigma_dx']:.1f}, σy={c['sigma_dy']:.1f} mas")
        hx.hist(data.dx[mask], bins=bins, histtype="step", color=color, lw=1.2, label=label)
        hy.hist(data.dy[mask], bins=bins, histtype="step", color=color, lw=1.2,
                orientation="horizontal")
    ax.axhline(0, color="0.5", lw=0.5)
    ax.axvline(0, color="0.5", lw=0.5)
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("dx (mas)")
    ax.set_ylabel("dy (mas)")
    hx.set_ylabel("number")
    hy.set_xlabel("number")
    hx.tick_params(labelbottom=False)
    hy.tick_params(labelleft=False)
    handles, labels = hx.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=7, loc="lower left", framealpha=0.85)
    fig.suptitle(f"ResPosScatter: astrometric residuals (measured − model), "
                 f"{stats['nsigma']:g}σ-clipped σ\n{data.label}", fontsize=10)
    return save_figure(fig, path)
