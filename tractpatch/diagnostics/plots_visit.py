"""Per-visit diagnostic plots of a joint fit: ResPosArrow2D, fcont, jcont.

Each function takes a :class:`~tractpatch.diagnostics.fitdata.FitDiagnostics` and a visit
ID and writes one PNG atomically. The figure helpers here (``new_figure``, ``save_figure``,
``draw_ccds``, ``subsample``) are shared with the global plots.

Big data: the arrow plot draws at most ``max_arrows`` residual vectors per visit (a fixed,
seeded random subsample of the not-rejected measurements), so its cost does not grow with
the number of stars.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..atomic import atomic_path  # noqa: E402
from .fitdata import FitDiagnostics  # noqa: E402

REF_COLOR = "tab:blue"
INT_COLOR = "tab:orange"
DPI = 100


def new_figure(width: float = 8.0, height: float = 6.5) -> Figure:
    """A pyplot-free Agg figure (no global state, safe in threads and workers)."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        # fast zlib level: the PNGs are 30 % larger but written twice as fast
        fig.savefig(tmp, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    return path


def subsample(n: int, max_n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded random subsample of ``max_n`` out of ``n`` (all if fewer)."""
    if n <= max_n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_n, replace=False))


def draw_ccds(ax, data: FitDiagnostics, labels: bool = True) -> None:
    """CCD outlines (and IDs at their centres) on a focal-plane axes."""
    ax.add_collection(PolyCollection(data.ccd_corners, facecolors="none",
                                     edgecolors="0.45", linewidths=0.7, zorder=1))
    if labels:
        size = 7 if data.ccd_id.size <= 40 else 5
        for cid, x, y in zip(data.ccd_id, data.ccd_fx, data.ccd_fy):
            ax.text(x, y, str(cid), ha="center", va="center", fontsize=size, color="0.5",
                    zorder=0)
    corners = data.ccd_corners.reshape(-1, 2)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    pad = 0.04 * (hi - lo).max()
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("focal-plane x (deg)")
    ax.set_ylabel("focal-plane y (deg)")


def nice_length(value: float) -> float:
    """The 1, 2, 5 x 10^k number nearest above ``value`` (a legible scale-arrow length)."""
    if not np.isfinite(value) or value <= 0:
        return 1.0
    k = np.floor(np.log10(value))
    for m in (1, 2, 5, 10):
        if m * 10 ** k >= value:
            return float(m * 10 ** k)
    return float(10 ** (k + 1))


def arrow_data(data: FitDiagnostics, visit: int, max_arrows: int = 5000) -> dict:
    """The residual vectors ResPosArrow2D draws for one visit.

    Not-rejected measurements of the visit, subsampled (seeded) to ``max_arrows``.

    Returns
    -------
    dict
        ``fx, fy`` (deg), ``dx, dy`` (mas), ``length`` (mas), ``is_ref``, ``ccd`` arrays,
        and ``scale_mas``: the length of the scale arrow (a 1-2-5 number above the 90th
        percentile of the lengths).
    """
    sel = np.flatnonzero((data.visit == visit) & ~data.rejected)
    sel = sel[subsample(sel.size, max_arrows, seed=int(visit) % (2 ** 32))]
    out = {k: getattr(data, k)[sel] for k in ("fx", "fy", "dx", "dy", "is_ref", "ccd")}
    out["length"] = np.hypot(out["dx"], out["dy"])
    out["scale_mas"] = nice_length(np.percentile(out["length"], 90)) if sel.size else 1.0
    return out


def flux_per_area(data: FitDiagnostics, iv: int) -> np.ndarray:
    """Flux correction per unit sky area of visit index ``iv``, in % from its median.

    The flux correction is applied to counts on flat-fielded pixels, so it contains the
    pixel-area pattern of the distortion (a flat makes surface brightness uniform, which
    makes point-source fluxes scale with pixel area); dividing by the relative pixel area
    leaves what the photometric fit found beyond the optics.
    """
    ratio = data.flux_corr[iv] / data.pixel_area[iv]
    return 100.0 * (ratio / np.nanmedian(ratio) - 1.0)


def _levels(values, n: int = 13) -> np.ndarray:
    """About ``n`` contour levels spanning the finite values (a small range if the map is flat)."""
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-9 * max(1.0, abs(hi)):  # a flat map still gets a legible scale
        lo, hi = lo - 1e-3 * max(1.0, abs(lo)), hi + 1e-3 * max(1.0, abs(hi))
    return MaxNLocator(n).tick_values(lo, hi)  # round numbers: legible contour labels


class VisitFigures:
    """The per-visit plots of one fit, drawn on figures reused from visit to visit.

    The axes, CCD outlines and labels are built once per kind; each visit only adds its
    arrows or contours, saves, and removes them again (about half the cost of a new
    figure, which matters with hundreds of visits).
    """

    def __init__(self, data: FitDiagnostics, max_arrows: int = 5000):
        self.data = data
        self.max_arrows = max_arrows
        self._arrow = None
        self._contour = None

    def _arrow_axes(self):
        if self._arrow is None:
            fig = new_figure(8.0, 7.8)
            ax = fig.add_axes([0.1, 0.1, 0.85, 0.78])
            draw_ccds(ax, self.data)
            self._arrow = fig, ax
        return self._arrow

    def _contour_axes(self):
        if self._contour is None:
            fig = new_figure(8.5, 7.0)
            ax = fig.add_axes([0.1, 0.09, 0.68, 0.78])
            cax = fig.add_axes([0.83, 0.14, 0.025, 0.68])
            draw_ccds(ax, self.data, labels=False)
            self._contour = fig, ax, cax
        return self._contour

    def res_pos_arrow(self, visit: int, path) -> Path:
        """``ResPosArrow2D_<visit>.png``: astrometric residual vectors over the focal plane.

        Reference-matched and internal stars in two colours, CCD outlines with IDs, and a
        scale arrow labelled with its length in mas. Arrows share one scale: the scale arrow
        is 8 % of the focal-plane width.
        """
        data = self.data
        fig, ax = self._arrow_axes()
        a = arrow_data(data, visit, self.max_arrows)
        width = np.ptp(data.ccd_corners[..., 0]) or 1.0
        scale = a["scale_mas"] / (0.08 * width)  # mas per degree of arrow on the plot
        added = []
        for mask, color in ((~a["is_ref"], INT_COLOR), (a["is_ref"], REF_COLOR)):
            if mask.any():
                added.append(ax.quiver(a["fx"][mask], a["fy"][mask], a["dx"][mask],
                                       a["dy"][mask], color=color, angles="xy",
                                       scale_units="xy", scale=scale, width=0.0022, zorder=2))
        if added:
            added.append(ax.quiverkey(added[-1], 0.86, -0.085, a["scale_mas"],
                                      f"{a['scale_mas']:g} mas", coordinates="axes",
                                      labelpos="E", color="k"))
        n_ref, n_int = int(a["is_ref"].sum()), int((~a["is_ref"]).sum())
        added.append(ax.legend(handles=[
            Line2D([], [], color=REF_COLOR, lw=2, label=f"reference-matched ({n_ref})"),
            Line2D([], [], color=INT_COLOR, lw=2, label=f"internal ({n_int})")],
            loc="lower left", fontsize=8, framealpha=0.8))
        rms = np.sqrt(np.mean(a["length"] ** 2)) if a["length"].size else np.nan
        ax.set_title(f"ResPosArrow2D visit {visit}: residuals (measured − model)\n"
                     f"{data.label}; rms |d| = {rms:.1f} mas", fontsize=10)
        try:
            return save_figure(fig, path)
        finally:
            for art in added:
                art.remove()

    def _contours(self, values, path, title: str, cbar_label: str, cmap: str) -> Path:
        data = self.data
        fig, ax, cax = self._contour_axes()
        levels = _levels(values)
        cs = ax.contourf(data.grid_fx, data.grid_fy, values, levels=levels, cmap=cmap, zorder=0)
        added = [cs]
        if np.isfinite(values).any() and np.nanmax(values) > np.nanmin(values):
            lines = ax.contour(data.grid_fx, data.grid_fy, values, levels=levels[1:-1:2],
                               colors="k", linewidths=0.6, zorder=1)
            # as many decimals as the level step needs (1.0004, not 1)
            step = levels[1] - levels[0]
            ax.clabel(lines, fontsize=7,
                      fmt=f"%.{max(0, int(-np.floor(np.log10(step))))}f")
            added.append(lines)
        fig.colorbar(cs, cax=cax, label=cbar_label)
        ax.set_title(title, fontsize=10)
        try:
            return save_figure(fig, path)
        finally:
            for art in added:
                art.remove()
            cax.clear()

    def fcont(self, visit: int, path) -> Path:
        """``fcont_<visit>.png``: contours of the flux correction per unit sky area (%)."""
        iv = int(np.flatnonzero(self.data.visit_id == visit)[0])
        return self._contours(
            flux_per_area(self.data, iv), path,
            f"fcont visit {visit}: fitted flux correction per unit sky area\n"
            f"{self.data.label}; pixel-area pattern divided out",
            "flux correction / relative pixel area − median (%)", "coolwarm")

    def jcont(self, visit: int, path) -> Path:
        """``jcont_<visit>.png``: contours of the relative pixel area (concentric if good)."""
        iv = int(np.flatnonzero(self.data.visit_id == visit)[0])
        return self._contours(
            self.data.pixel_area[iv], path,
            f"jcont visit {visit}: relative pixel area of the distortion\n"
            f"{self.data.label}; concentric for a good fit",
            "relative pixel area (Jacobian determinant / centre value)", "viridis")


def plot_res_pos_arrow(data: FitDiagnostics, visit: int, path, max_arrows: int = 5000):
    """Write ``ResPosArrow2D_<visit>.png`` (see :meth:`VisitFigures.res_pos_arrow`)."""
    return VisitFigures(data, max_arrows).res_pos_arrow(visit, path)


def plot_fcont(data: FitDiagnostics, visit: int, path):
    """Write ``fcont_<visit>.png`` (see :meth:`VisitFigures.fcont`)."""
    return VisitFigures(data).fcont(visit, path)


def plot_jcont(data: FitDiagnostics, visit: int, path):
    """Write ``jcont_<visit>.png`` (see :meth:`VisitFigures.jcont`)."""
    return VisitFigures(data).jcont(visit, path)
