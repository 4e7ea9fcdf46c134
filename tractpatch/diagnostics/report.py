"""Write the self-contained HTML report of a rerun (pictures embedded as data URIs)."""
from __future__ import annotations

import base64
import html
import io
import os
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import write_text_atomic
from . import report_contents as collect

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right} th{background:#f3f3f3} td.l,th.l{text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
.gallery figure{margin:0;max-width:380px} .gallery img{max-width:380px;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555} .bad{color:#b00} .ok{color:#070}
"""


def _img(path_or_bytes, alt: str, width: int | None = None) -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    b64 = base64.b64encode(data).decode()
    w = f' width="{width}"' if width else ""
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}"{w}>'


def coadd_thumbnail(path, size_px: int = 300) -> bytes:
    """PNG bytes of a coadd's IMAGE plane with an asinh stretch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.io import fits
    from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval

    with fits.open(path) as h:
        img = np.asarray(h["IMAGE"].data, dtype=float)
    step = max(1, int(np.ceil(max(img.shape) / size_px)))
    small = img[::step, ::step]
    finite = np.isfinite(small)
    if not finite.any():
        small = np.zeros_like(small)
    norm = ImageNormalize(np.where(finite, small, 0), interval=ZScaleInterval(),
                          stretch=AsinhStretch(0.1))
    fig = plt.figure(figsize=(small.shape[1] / 100, small.shape[0] / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(np.where(finite, small, np.nan), origin="lower", cmap="gray", norm=norm)
    ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>'
                 for i, h in enumerate(header))
    body = []
    for r in rows:
        tds = "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r))
        body.append(f"<tr>{tds}</tr>")
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _section_stages(repo) -> str:
    stages = collect.stage_summaries(repo)
    if not stages:
        return "<p>No task has run in this rerun yet.</p>"
    rows = [[s.task, s.units, s.done, s.flagged, s.faulted, s.pending, f"{s.seconds:.1f}"]
            for s in stages]
    out = [_table(["stage", "units", "done", "flagged", "faulted", "pending", "CPU-time s"],
                  rows)]
    problems = [(s.task, ident, why) for s in stages for ident, why in s.problems]
    if problems:
        out.append("<h3>Flagged and faulted units</h3>")
        out.append(_table(["stage", "data ID", "why"],
                          [[html.escape(t), html.escape(i), html.escape(w)]
                           for t, i, w in problems], left=3))
    return "".join(out)


def _section_fits(repo, solver: str) -> str:
    fits_ = collect.fit_results(repo, solver)
    if not fits_:
        return ""
    out = [f"<h2>{solver}</h2>"]
    for f in fits_:
        m = f["metrics"]
        scalars = [[html.escape(k), _fmt(v)] for k, v in m.items()
                   if isinstance(v, (int, float, str))]
        out.append(f"<h3>tract {html.escape(f['tract'])}, filter {html.escape(f['filter'])}</h3>")
        if scalars:
            out.append(_table(["metric", "value"], scalars))
        if f["index"] is not None:
            rel = os.path.relpath(f["index"], repo.path("report").parent)
            out.append(f'<p><a href="{html.escape(rel)}">all diagnostics of this fit</a> '
                       "(every visit, data files)</p>")
        if f["pictures"]:
            figs = "".join(f"<figure>{_img(p, p.stem)}<figcaption>{html.escape(p.name)}"
                           "</figcaption></figure>" for p in f["pictures"])
            out.append(f'<div class="gallery">{figs}</div>')
    return "".join(out)


def _section_coadds(repo) -> str:
    coadds = collect.coadd_files(repo)
    colors = collect.color_images(repo)
    if not coadds and not colors:
        return ""
    out = ["<h2>Coadds</h2>"]
    if colors:
        figs = "".join(f"<figure>{_img(p, p.stem)}<figcaption>{html.escape(p.name)}"
                       "</figcaption></figure>" for p in colors)
        out.append(f'<div class="gallery">{figs}</div>')
    figs = "".join(
        f"<figure>{_img(coadd_thumbnail(c['path']), c['patch'])}<figcaption>"
        f"{html.escape(c['filter'])} tract {html.escape(c['tract'])} patch "
        f"{html.escape(c['patch'])}</figcaption></figure>" for c in coadds)
    out.append(f'<div class="gallery">{figs}</div>')
    return "".join(out)


def _section_accuracy(repo) -> str:
    acc = collect.accuracy(repo)
    if not acc:
        return ""
    rows = []
    for name, entry in acc.items():
        if isinstance(entry, dict):
            value, target = entry.get("value"), entry.get("target")
            ok = entry.get("ok")
            cls = "ok" if ok else ("bad" if ok is False else "")
            rows.append([html.escape(name), f'<span class="{cls}">{_fmt(value)}</span>',
                         _fmt(target) if target is not None else "",
                         html.escape(str(entry.get("unit", "")))])
    return ("<h2>Accuracy against the simulator's truth</h2>"
            + _table(["quantity", "measured", "target", "unit"], rows))


def render_report(repo) -> str:
    """The HTML text of the report of ``repo``'s rerun."""
    n_exp = len(repo.registry.exposures())
    maps = collect.tract_maps(repo)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>tractpatch report: rerun {html.escape(repo.rerun)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>tractpatch report — rerun <code>{html.escape(repo.rerun)}</code></h1>",
        f"<p>Repository <code>{html.escape(str(repo.root))}</code>: {n_exp} CCD exposures "
        f"ingested. Made {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by tractpatch "
        f"{html.escape(__version__)}.</p>",
        _section_accuracy(repo),
        "<h2>Tracts</h2>" if maps else "",
        '<div class="gallery">' + "".join(
            f"<figure>{_img(p, p.stem)}<figcaption>{html.escape(p.name)}</figcaption></figure>"
            for p in maps) + "</div>" if maps else "",
        "<h2>Stages</h2>", _section_stages(repo),
        _section_fits(repo, "jointcal"), _section_fits(repo, "mosaic"),
        _section_coadds(repo),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def make_report(repo) -> Path:
    """Write ``rerun/<rerun>/report/index.html`` atomically and return its path."""
    path = repo.path("report")
    write_text_atomic(path, render_report(repo))
    return path
