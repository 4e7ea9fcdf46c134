"""Write every diagnostic of a joint fit into one folder: the single entry point.

``write_diagnostics(data, out_dir)`` is what jointcal.py and mosaic.py call after a fit (with
``--diagnostics``); it needs only a :class:`~tractpatch.diagnostics.fitdata.FitDiagnostics`.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from . import datafiles, plots_global, plots_visit
from .fitdata import FitDiagnostics
from .gallery import write_index


def _visit_plots(data: FitDiagnostics, out: Path, visits: list[int],
                 max_arrows: int) -> dict[int, list[Path]]:
    """ResPosArrow2D, fcont and jcont of ``visits`` on reused figures."""
    figures = plots_visit.VisitFigures(data, max_arrows)
    return {v: [figures.res_pos_arrow(v, out / f"ResPosArrow2D_{v}.png"),
                figures.fcont(v, out / f"fcont_{v}.png"),
                figures.jcont(v, out / f"jcont_{v}.png")] for v in visits}


def write_diagnostics(data: FitDiagnostics, out_dir, visits=None,
                      max_arrows: int = 5000) -> list[Path]:
    """Write the plots, data files and ``index.html`` of a fit into ``out_dir``.

    Every file is written atomically (temporary file, then rename) and ``index.html`` last,
    so the page only ever links complete files; a rerun overwrites files of the same name.

    Parameters
    ----------
    data : FitDiagnostics
        The fit.
    out_dir : str or Path
        The diagnostics folder (created).
    visits : iterable of int, optional
        Visits to draw the per-visit plots (ResPosArrow2D, fcont, jcont) for; default all.
        The global plots and data files always use every visit.
    max_arrows : int
        At most this many residual vectors per ResPosArrow2D (seeded subsample).

    Returns
    -------
    list of Path
        Every file written: global PNGs, per-visit PNGs, data files, ``index.html``.
    """
    out = Path(out_dir)
    if visits is None:
        visits = [int(v) for v in data.visit_id]
    else:
        visits = [int(v) for v in visits]
        unknown = sorted(set(visits) - set(int(v) for v in data.visit_id))
        if unknown:
            raise UserError(f"diagnostics of {data.label}: visits {unknown[:5]} are not in the "
                            f"fit; choose among {[int(v) for v in data.visit_id][:10]}...")
    stats = datafiles.residual_stats(data)
    glob = [plots_global.plot_dflux2d(data, out / "DFlux2D.png"),
            plots_global.plot_res_flux(data, out / "ResFlux.png"),
            plots_global.plot_mdm(data, out / "MdM.png"),
            plots_global.plot_pos_dpos(data, out / "PosDPos.png"),
            plots_global.plot_res_pos_scatter(data, stats, out / "ResPosScatter.png")]
    # about 0.35 s of CPU per visit: choose ``visits`` for tracts of hundreds of visits
    per_visit = _visit_plots(data, out, visits, max_arrows)
    files = [datafiles.write_catalog(data, out / "catalog.fits"),
             datafiles.write_ccd(data, out / "ccd.dat"),
             datafiles.write_ccd_scale(data, out / "ccdScale.dat"),
             datafiles.write_coeffs(data, out / "coeffs.dat"),
             datafiles.write_dmag(data, out / "dmag.dat"),
             datafiles.write_dpos(data, out / "dpos.dat"),
             datafiles.write_stats(stats, out / "residualStats.yaml")]
    index = write_index(data, out, glob, per_visit, files, stats)
    return glob + [p for v in visits for p in per_visit[v]] + files + [index]


def residual_stats(data: FitDiagnostics) -> dict:
    """Residual statistics written to ``residualStats.yaml`` (see datafiles.residual_stats)."""
    return datafiles.residual_stats(data)


__all__ = ["write_diagnostics", "residual_stats"]
