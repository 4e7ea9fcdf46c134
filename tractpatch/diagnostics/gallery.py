"""``index.html`` of a diagnostics folder: every plot and data file, linked relatively."""
from __future__ import annotations

import html
from pathlib import Path

from ..atomic import write_text_atomic
from .fitdata import FitDiagnostics

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1300px;color:#222}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0}
figure img{max-width:400px;border:1px solid #ddd} figcaption{font-size:.85em;color:#555}
"""

DESCRIPTIONS = {
    "DFlux2D": "each visit's flux correction minus the mean over visits, on the focal plane",
    "ResFlux": "magnitude residuals: histogram, against radius, per visit, per CCD",
    "MdM": "magnitude residual against magnitude (reference-matched / internal)",
    "PosDPos": "astrometric residuals against focal-plane position",
    "ResPosScatter": "astrometric residual scatter with marginal histograms and clipped σ",
    "ResPosArrow2D": "astrometric residual vectors over the focal plane",
    "fcont": "flux correction per unit sky area (pixel-area pattern divided out)",
    "jcont": "relative pixel area of the distortion (concentric for a good fit)",
    "catalog.fits": "per star: mean RA, Dec, magnitude, error, number of observations",
    "ccd.dat": "CCD centre and rotation on the focal plane",
    "ccdScale.dat": "per-CCD flux scale",
    "coeffs.dat": "per-visit model coefficients",
    "dmag.dat": "every magnitude residual",
    "dpos.dat": "every astrometric residual",
    "residualStats.yaml": "residual statistics (clipped σ, per-CCD and per-visit RMS)",
}


def _figure(name: str, title: str) -> str:
    n = html.escape(name)
    return (f'<figure><a href="{n}"><img src="{n}" alt="{html.escape(title)}" '
            f'loading="lazy"></a><figcaption>{html.escape(title)}</figcaption></figure>')


def _extra_table(extra: dict) -> str:
    """The solver's scalar facts (``FitDiagnostics.extra``) as a two-column table."""
    if not extra:
        return ""
    rows = "".join(f'<tr><td class="l">{html.escape(str(k))}</td>'
                   f'<td>{html.escape(f"{v:.6g}" if isinstance(v, float) else str(v))}</td></tr>'
                   for k, v in extra.items())
    return f"<table><tr><th class='l'>fit</th><th>value</th></tr>{rows}</table>"


def write_index(data: FitDiagnostics, out_dir, global_pngs: list[Path],
                visit_pngs: dict[int, list[Path]], data_files: list[Path],
                stats: dict) -> Path:
    """Write ``out_dir/index.html`` showing the given files (names relative to out_dir)."""
    out_dir = Path(out_dir)
    title = f"Fit diagnostics: {data.label}"
    c = stats["clipped"]
    rows = "".join(
        f'<tr><td class="l">{k}</td><td>{v["n"]}</td><td>{v["sigma_dx"]:.2f}</td>'
        f'<td>{v["sigma_dy"]:.2f}</td><td>{1000 * v["sigma_dmag"]:.2f}</td></tr>'
        for k, v in c.items())
    worst = sorted(stats["per_ccd"].items(), key=lambda kv: -(kv[1]["rms_pos"]
                                                              if kv[1]["n"] else -1))[:5]
    worst_txt = ", ".join(f"{k} ({v['rms_pos']:.1f} mas)" for k, v in worst)
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{stats['n_meas']} measurements ({stats['n_rejected']} rejected) of "
        f"{stats['n_stars']} stars in {data.visit_id.size} visits and {data.ccd_id.size} CCDs."
        f" Focal plane in degrees; residuals measured − model.</p>",
        "<table><tr><th class='l'>3σ-clipped</th><th>n</th><th>σ dx (mas)</th>"
        f"<th>σ dy (mas)</th><th>σ Δmag (mmag)</th></tr>{rows}</table>",
        f"<p>CCDs with the largest position RMS: {html.escape(worst_txt)}</p>",
        _extra_table(data.extra),
        "<h2>All visits</h2><div class='gallery'>",
    ]
    for p in global_pngs:
        parts.append(_figure(p.name, f"{p.stem}: {DESCRIPTIONS.get(p.stem, '')}"))
    parts.append("</div><h2>Per visit</h2>")
    for v, pngs in visit_pngs.items():
        parts.append(f"<h3>visit {v}</h3><div class='gallery'>")
        for p in pngs:
            kind = p.stem.split("_")[0]
            parts.append(_figure(p.name, f"{kind} visit {v}: {DESCRIPTIONS.get(kind, '')}"))
        parts.append("</div>")
    parts.append("<h2>Data files</h2><ul>")
    for p in data_files:
        n = html.escape(p.name)
        parts.append(f'<li><a href="{n}">{n}</a>: {html.escape(DESCRIPTIONS.get(p.name, ""))}'
                     "</li>")
    parts.append("</ul></body></html>\n")
    path = out_dir / "index.html"
    write_text_atomic(path, "\n".join(parts))
    return path
