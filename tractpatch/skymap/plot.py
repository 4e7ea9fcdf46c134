"""The tract picture: patch grid with labels, CCD footprints coloured by visit or
filter (PNG)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from ..atomic import write_bytes_atomic  # noqa: E402


def plot_tract(tract, rows: list[dict], path, color_by: str = "visit",
               title: str | None = None, marks: list[tuple[float, float]] = ()) -> None:
    """Draw ``tract``'s patches (inner boxes, labelled ``x,y``) and the footprints of
    exposure ``rows`` in tract pixels, coloured by ``color_by`` ("visit" or "filter"),
    and write a PNG to ``path`` atomically. ``marks`` are (ra, dec) positions to star.
    """
    fig, ax = plt.subplots(figsize=(8, 8))
    b = tract.bbox
    ax.add_patch(plt.Rectangle((b.x0 - 0.5, b.y0 - 0.5), b.width, b.height, fill=False,
                               lw=2, ec="black"))
    nx, ny = tract.num_patches
    fontsize = max(4, 12 - max(nx, ny) // 3)
    for p in tract.patches():
        ib = p.inner_bbox
        ax.add_patch(plt.Rectangle((ib.x0 - 0.5, ib.y0 - 0.5), ib.width, ib.height,
                                   fill=False, lw=0.6, ec="0.5"))
        ax.text((ib.x0 + ib.x1) / 2, (ib.y0 + ib.y1) / 2, p.name, ha="center",
                va="center", fontsize=fontsize, color="0.35")
    keys = sorted({r[color_by] for r in rows}, key=str)
    cmap = plt.get_cmap("tab20" if len(keys) > 10 else "tab10")
    colours = {k: cmap(i % cmap.N) for i, k in enumerate(keys)}
    polys, cols = [], []
    for r in rows:
        ra = [r[f"ra{i}"] for i in range(1, 5)]
        dec = [r[f"dec{i}"] for i in range(1, 5)]
        xy = tract.pixel_polygon(ra, dec)
        if len(xy) == 4:
            polys.append(xy)
            cols.append(colours[r[color_by]])
    if polys:
        ax.add_collection(PolyCollection(polys, facecolors=[(*c[:3], 0.25) for c in cols],
                                         edgecolors=cols, linewidths=0.8))
        for k in keys:
            ax.plot([], [], color=colours[k], lw=4, label=f"{color_by} {k}")
        ax.legend(loc="upper right", fontsize=7, ncol=1 + len(keys) // 15)
    for ra, dec in marks:
        x, y = tract.sky_to_pixel([ra], [dec])
        if np.isfinite(x[0]):
            ax.plot(x, y, marker="*", ms=14, color="red")
    pad = 0.03 * max(b.width, b.height)
    ax.set_xlim(b.x0 - pad, b.x1 + pad)
    ax.set_ylim(b.y0 - pad, b.y1 + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("tract x (pixels; East left)")
    ax.set_ylabel("tract y (pixels; North up)")
    ra, dec = tract.center
    ax.set_title(title or f"tract {tract.tract_id}: {nx} x {ny} patches, centre "
                 f"({ra:.4f}, {dec:.4f})")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
