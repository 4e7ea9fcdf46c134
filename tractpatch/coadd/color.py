"""``makeColorImage.py``: an RGB PNG of a patch or a tract from three filters' coadds.

::

    makeColorImage.py ROOT --rerun R --tract 0 [--patch 4,5] \\
        --filters HSC-I HSC-R HSC-G [--out color.png] [--Q 8] [--stretch S] [--bin 2]

Lupton et al. (2004) asinh stretch (``astropy.visualization.make_lupton_rgb``), as the
PS1 and HSC image services show. Patches of a tract share its pixel grid, so a tract
image is the patches' inner boxes pasted side by side (no resampling); ``--bin`` sums
``bin × bin`` pixels to keep large tracts small. Missing pixels are black.
"""
from __future__ import annotations

import logging
import sys

import numpy as np
from astropy.io import fits

from ..atomic import atomic_path
from ..cli.parser import CommandParser
from ..cli.task import simple_main
from ..errors import UserError
from ..repo import Repository

log = logging.getLogger("makeColorImage")


def read_patch_image(repo, filt, tract_id, patch) -> np.ndarray | None:
    """The coadd IMAGE of one patch (NaN where no data), or None when it is missing."""
    path = repo.find("deepCoadd", filter=filt, tract=tract_id, patch=patch.name)
    if path is None:
        return None
    with fits.open(path) as h:
        return np.asarray(h["IMAGE"].data, dtype=np.float32)


def band_image(repo, tract, filt, patch=None) -> np.ndarray:
    """One filter over a patch's inner box, or over the whole tract (patch inner boxes)."""
    patches = [patch] if patch is not None else tract.patches()
    if patch is not None:
        box = patch.inner_bbox
    else:
        box = tract.bbox
    out = np.full((box.y1 - box.y0, box.x1 - box.x0), np.nan, np.float32)
    found = 0
    for p in patches:
        img = read_patch_image(repo, filt, tract.tract_id, p)
        if img is None:
            continue
        found += 1
        ib, ob = p.inner_bbox, p.outer_bbox
        sub = img[ib.y0 - ob.y0:ib.y1 - ob.y0, ib.x0 - ob.x0:ib.x1 - ob.x0]
        out[ib.y0 - box.y0:ib.y1 - box.y0, ib.x0 - box.x0:ib.x1 - box.x0] = sub
    if not found:
        where = f"patch {patch.name}" if patch is not None else "any patch"
        raise UserError(f"no deepCoadd of filter {filt} for tract {tract.tract_id} "
                        f"{where} in rerun {repo.rerun} or its inputs; run coaddDriver.py "
                        f"--id tract={tract.tract_id} filter={filt} first")
    return out


def bin_image(img: np.ndarray, n: int) -> np.ndarray:
    """Sum ``n × n`` blocks (NaN counted as 0); the edges that do not fill a block drop."""
    if n <= 1:
        return img
    ny, nx = (img.shape[0] // n) * n, (img.shape[1] // n) * n
    a = np.nan_to_num(img[:ny, :nx])
    return a.reshape(ny // n, n, nx // n, n).sum(axis=(1, 3))


def crop_to_data(bands: list[np.ndarray], margin: int = 8) -> list[np.ndarray]:
    """Crop aligned images to the bounding box of the pixels any of them covers
    (a tract is usually larger than the area its exposures cover)."""
    covered = np.zeros(bands[0].shape, bool)
    for b in bands:
        covered |= np.isfinite(b) & (b != 0)
    if not covered.any():
        return bands
    ys, xs = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    y0, y1 = max(ys[0] - margin, 0), min(ys[-1] + 1 + margin, covered.shape[0])
    x0, x1 = max(xs[0] - margin, 0), min(xs[-1] + 1 + margin, covered.shape[1])
    return [b[y0:y1, x0:x1] for b in bands]


def color_image(r, g, b, q: float = 8.0, stretch: float | None = None) -> np.ndarray:
    """``uint8`` RGB array of three aligned images (Lupton asinh).

    ``stretch`` defaults to 20 × the robust sky noise of the summed image, so the sky is
    dark grey and faint sources show.
    """
    from astropy.visualization import make_lupton_rgb

    planes = [np.nan_to_num(np.asarray(x, dtype=np.float64)) for x in (r, g, b)]
    if stretch is None:
        tot = planes[0] + planes[1] + planes[2]
        good = tot[tot != 0]
        if good.size == 0:
            raise UserError("the three coadds hold no data in this area")
        mad = np.median(np.abs(good - np.median(good)))
        stretch = max(20 * 1.4826 * mad / 3, 1e-12)
    return make_lupton_rgb(*planes, minimum=0.0, stretch=stretch, Q=q)


def _body(argv) -> int:
    p = CommandParser(prog="makeColorImage.py", description=__doc__.splitlines()[0])
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--rerun", required=True)
    p.add_argument("--tract", type=int, required=True)
    p.add_argument("--patch", help="x,y (default: the whole tract)")
    p.add_argument("--filters", nargs="+", required=True, metavar="FILTER",
                   help="RED GREEN BLUE, or RED BLUE (green is then their mean)")
    p.add_argument("--out", help="PNG path (default rerun/R/deepCoadd/"
                   "color-<tract>[-<patch>].png)")
    p.add_argument("--Q", type=float, default=8.0, help="asinh softening (Lupton Q)")
    p.add_argument("--stretch", type=float, help="linear range (coadd units)")
    p.add_argument("--bin", type=int, default=1, help="sum bin x bin pixels")
    p.add_argument("--doraise", action="store_true")
    args = p.parse_args(argv)
    from ..skymap import load_skymap

    repo = Repository(args.root, rerun=args.rerun)
    skymap = load_skymap(repo)
    try:
        tract = skymap[args.tract]
    except (KeyError, IndexError):
        raise UserError(f"--tract {args.tract}: not in the skymap") from None
    patch = None
    if args.patch:
        try:
            x, y = (int(v) for v in args.patch.split(","))
            patch = tract.patch(x, y)
        except (ValueError, IndexError, KeyError):
            raise UserError(f"--patch {args.patch}: expected x,y of a patch of tract "
                            f"{args.tract}") from None
    if len(args.filters) not in (2, 3):
        raise UserError(f"--filters {' '.join(args.filters)}: give three filters (red green "
                        "blue) or two (red blue; green is their mean)")
    bands = [bin_image(band_image(repo, tract, f, patch), args.bin) for f in args.filters]
    if len(bands) == 2:  # two-band colour image: green is the mean of red and blue
        bands = [bands[0], 0.5 * (bands[0] + bands[1]), bands[1]]
    if patch is None:
        bands = crop_to_data(bands)
    rgb = color_image(*bands, q=args.Q, stretch=args.stretch)
    name = f"color-{args.tract}{'-' + patch.name if patch else ''}.png"
    out = args.out or repo.rerun_dir / "deepCoadd" / name
    import matplotlib.image

    with atomic_path(out) as tmp:
        # origin lower: north up for the usual tract orientation
        matplotlib.image.imsave(tmp, rgb[::-1], format="png")
    log.info("wrote %s (%d x %d)", out, rgb.shape[1], rgb.shape[0])
    return 0


def main() -> None:
    """Entry point of ``makeColorImage.py``."""
    sys.exit(simple_main("makeColorImage", _body))
