"""``cutout.py``: a FITS (and PNG) cutout of the coadds at any position, stitched across
patch and tract boundaries.

::

    cutout.py ROOT --rerun R --ra 150.01 --dec 2.2 --size 30 [--filter HSC-I]
        [--out cutout.fits] [--png]

The cutout grid is a TAN projection centred on (ra, dec) with the skymap's pixel scale,
north up. Every coadd patch (of every tract) that overlaps it is resampled onto it with
astropy reproject (bilinear for image and variance, nearest for the mask) and the
overlapping patches are combined with inverse-variance weights, so pixels near patch and
tract edges are filled (the PS1 cutout service leaves them blank). Output HDUs IMAGE,
MASK, VARIANCE with the cutout WCS and the coadd zero point.
"""
from __future__ import annotations

import logging
import math
import sys
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from ..atomic import atomic_path, write_fits_atomic
from ..cli.parser import CommandParser
from ..cli.task import simple_main
from ..errors import UserError
from ..image import MaskPlanes, wcs_to_header
from ..repo import Repository

log = logging.getLogger("cutout")


@dataclass
class Cutout:
    """A stitched cutout."""

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    wcs: WCS
    sources: list
    zero_point: float


def cutout_wcs(ra: float, dec: float, size_arcsec: float, scale_arcsec: float):
    """TAN WCS (north up, east left) of a square cutout and its shape."""
    n = max(1, int(math.ceil(size_arcsec / scale_arcsec)))
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(n + 1) / 2.0, (n + 1) / 2.0]
    s = scale_arcsec / 3600.0
    w.wcs.cd = [[-s, 0.0], [0.0, s]]
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    return w, (n, n)


def make_cutout(repo, skymap, filt: str, ra: float, dec: float, size_arcsec: float,
                scale_arcsec: float | None = None) -> Cutout:
    """Stitch the coadds of ``filt`` overlapping the cutout (see the module docstring)."""
    from reproject import reproject_interp

    tracts = list(skymap)
    if scale_arcsec is None:
        scale_arcsec = float(np.sqrt(abs(np.linalg.det(tracts[0].wcs.pixel_scale_matrix)))
                             * 3600.0)
    wcs, shape = cutout_wcs(ra, dec, size_arcsec, scale_arcsec)
    ny, nx = shape
    cx = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    cy = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    cra, cdec = wcs.pixel_to_world_values(cx, cy)
    num = np.zeros(shape)
    den = np.zeros(shape)
    mask = np.zeros(shape, np.int32)
    sources = []
    zp = None
    mp = MaskPlanes()
    for tract in tracts:
        if not tract.overlaps(cra, cdec):
            continue
        for patch in tract.patches_overlapping(cra, cdec):
            path = repo.find("deepCoadd", filter=filt, tract=tract.tract_id,
                             patch=patch.name)
            if path is None:
                continue
            with fits.open(path) as h:
                img = np.asarray(h["IMAGE"].data, dtype=np.float64)
                var = np.asarray(h["VARIANCE"].data, dtype=np.float64)
                msk = np.asarray(h["MASK"].data)
                mp = MaskPlanes.from_header(h["MASK"].header)
                zp = h[0].header.get("MAGZERO", zp)
            pw = patch.outer_wcs
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ri, _ = reproject_interp((img, pw), wcs, shape_out=shape, order="bilinear")
                rv, _ = reproject_interp((var, pw), wcs, shape_out=shape, order="bilinear")
                rm, fm = reproject_interp((msk.astype(np.float64), pw), wcs,
                                          shape_out=shape, order="nearest-neighbor")
            ok = np.isfinite(ri) & np.isfinite(rv) & (rv > 0)
            w = np.where(ok, 1.0 / np.where(ok, rv, 1.0), 0.0)
            num += np.where(ok, ri, 0.0) * w
            den += w
            mask |= np.where(ok & (fm > 0), np.nan_to_num(rm), 0).astype(np.int32)
            sources.append(f"{tract.tract_id}:{patch.name}")
    if not sources:
        raise UserError(f"no {filt} coadd overlaps ({ra}, {dec}) ± {size_arcsec / 2:g}\" in "
                        f"rerun {repo.rerun} or its inputs; run coaddDriver.py there first")
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(den > 0, num / den, np.nan)
        variance = np.where(den > 0, 1.0 / den, np.nan)
    nodata = mp.bitmask("NO_DATA")
    mask[den == 0] |= nodata
    mask[den > 0] &= ~nodata
    return Cutout(image.astype(np.float32), variance.astype(np.float32), mask, wcs,
                  sources, float(zp if zp is not None else 27.0))


def write_cutout(path, cut: Cutout, header: dict) -> None:
    """Write IMAGE, MASK, VARIANCE with the cutout WCS."""
    prim = fits.PrimaryHDU()
    for k, v in header.items():
        prim.header[k] = v
    prim.header["MAGZERO"] = cut.zero_point
    prim.header["FLUXMAG0"] = 10 ** (0.4 * cut.zero_point)
    prim.header["NPATCHES"] = (len(cut.sources), "coadd patches stitched")
    h = wcs_to_header(cut.wcs)
    hdus = [prim]
    for name, data in (("IMAGE", cut.image), ("MASK", cut.mask), ("VARIANCE", cut.variance)):
        hdu = fits.ImageHDU(data, name=name)
        hdu.header.update(h)
        hdus.append(hdu)
    write_fits_atomic(path, fits.HDUList(hdus))


def write_png(path, image: np.ndarray) -> None:
    """Grey-scale asinh PNG (north up)."""
    import matplotlib.image
    from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval

    img = np.nan_to_num(image)
    norm = ImageNormalize(img, interval=ZScaleInterval(), stretch=AsinhStretch())
    with atomic_path(path) as tmp:
        matplotlib.image.imsave(tmp, norm(img)[::-1], cmap="gray", format="png",
                                vmin=0, vmax=1)


def _body(argv) -> int:
    p = CommandParser(prog="cutout.py", description=__doc__.splitlines()[0])
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--rerun", required=True)
    p.add_argument("--ra", type=float, required=True, help="deg")
    p.add_argument("--dec", type=float, required=True, help="deg")
    p.add_argument("--size", type=float, required=True, help="side (arcsec)")
    p.add_argument("--filter", default=None, help="default: the only filter coadded")
    p.add_argument("--out", help="FITS path (default cutout-<ra>-<dec>-<filter>.fits)")
    p.add_argument("--png", action="store_true", help="also write a PNG beside it")
    p.add_argument("--doraise", action="store_true")
    args = p.parse_args(argv)
    if not (0 < args.size <= 3600):
        raise UserError(f"--size {args.size}: give the side in arcsec, 0 < size <= 3600")
    if not -90 <= args.dec <= 90:
        raise UserError(f"--dec {args.dec}: must be within -90..90 deg")
    from ..skymap import load_skymap

    repo = Repository(args.root, rerun=args.rerun)
    skymap = load_skymap(repo)
    filt = args.filter or _only_filter(repo)
    cut = make_cutout(repo, skymap, filt, args.ra % 360.0, args.dec, args.size)
    out = args.out or f"cutout-{args.ra:.5f}-{args.dec:+.5f}-{filt}.fits"
    write_cutout(out, cut, {"FILTER": filt, "RA": args.ra, "DEC": args.dec,
                            "SIZE": (args.size, "arcsec")})
    log.info("wrote %s from %d patches (%s)", out, len(cut.sources), ", ".join(cut.sources))
    if args.png:
        png = str(out).rsplit(".fits", 1)[0] + ".png"
        write_png(png, cut.image)
        log.info("wrote %s", png)
    return 0


def _only_filter(repo) -> str:
    filters = set()
    for rerun in [repo.rerun, *repo.input_reruns]:
        d = repo.root / "rerun" / rerun / "deepCoadd"
        if d.is_dir():
            filters.update(p.name for p in d.iterdir() if p.is_dir())
    if len(filters) != 1:
        raise UserError(f"give --filter (coadds exist for {sorted(filters) or 'no filter'})")
    return filters.pop()


def main() -> None:
    """Entry point of ``cutout.py``."""
    sys.exit(simple_main("cutout", _body))
