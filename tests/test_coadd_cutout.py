"""cutout.py stitches coadd patches (and fills the pixels at patch corners);
makeColorImage.py makes an RGB PNG of a tract from three filters."""
from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from tractpatch.coadd.assemble import CoaddResult
from tractpatch.coadd.task import write_coadd
from tractpatch.image import MaskPlanes
from tractpatch.repo import Repository
from tractpatch.skymap import DiscreteSkyMap, DiscreteSkyMapConfig, save_skymap

STAR = (150.0, 2.0, 5000.0)  # ra, dec, flux (coadd units) at the tract centre
SIGMA_ARCSEC = 0.6


def _sky_model(wcs, shape, level):
    """A smooth background (linear in RA/Dec) plus one Gaussian star, per pixel."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    ra, dec = wcs.pixel_to_world_values(xx, yy)
    dx = (ra - STAR[0]) * np.cos(np.radians(STAR[1])) * 3600
    dy = (dec - STAR[1]) * 3600
    pix = 0.168 ** 2
    star = STAR[2] * pix / (2 * np.pi * SIGMA_ARCSEC ** 2) * np.exp(
        -(dx ** 2 + dy ** 2) / (2 * SIGMA_ARCSEC ** 2))
    return level + 0.01 * dx + 0.02 * dy + star


def _repo_with_patches(root, filters=("HSC-I",), levels=(1.0,)):
    """A repo whose tract (4x4 small patches) around (150, 2) has analytic coadds."""
    repo = Repository(root, create=True)
    repo.set_rerun("coadd")
    cfg = DiscreteSkyMapConfig(raList=[150.0], decList=[2.0], radiusList=[0.008],
                               patchInnerDimensions=[100, 100], patchBorder=10)
    skymap = DiscreteSkyMap(cfg)
    save_skymap(repo, skymap, "discrete")
    tract = skymap[0]
    for filt, level in zip(filters, levels):
        for p in tract.patches():
            shape = p.outer_shape
            img = _sky_model(p.outer_wcs, shape, level).astype(np.float32)
            res = CoaddResult(img, np.full(shape, 0.01, np.float32),
                              np.zeros(shape, np.int32), np.ones(shape, np.int32),
                              np.ones(shape, np.float32), MaskPlanes(), [], 27.0)
            write_coadd(repo.path("deepCoadd", filter=filt, tract=0, patch=p.name), res,
                        p.outer_wcs, {"MAGZERO": 27.0})
    return repo, tract


def test_cutout_stitches_across_patch_corners(tmp_path, run):
    repo, tract = _repo_with_patches(tmp_path / "repo")
    # the tract centre: patch boundaries run through it; 20" spans 4 patches' inner boxes
    ra, dec = STAR[0], STAR[1]
    assert len(tract.patches_overlapping(np.array([ra - 2e-3, ra + 2e-3, ra + 2e-3,
                                                   ra - 2e-3]),
                                         np.array([dec - 2e-3, dec - 2e-3, dec + 2e-3,
                                                   dec + 2e-3]))) >= 4
    out = tmp_path / "cut.fits"
    p = run("cutout.py", repo.root, "--rerun", "coadd", "--ra", ra, "--dec", dec,
            "--size", 20, "--filter", "HSC-I", "--out", out, "--png", check=0)
    assert "patches" in p.stderr
    with fits.open(out) as h:
        img = h["IMAGE"].data.astype(float)
        w = WCS(h["IMAGE"].header)
        assert h[0].header["NPATCHES"] >= 4 and h[0].header["MAGZERO"] == 27.0
        assert not np.any(h["MASK"].data & (1 << MaskPlanes().bit("NO_DATA")))
    assert img.shape == (120, 120) and np.all(np.isfinite(img))
    truth = _sky_model(w, img.shape, 1.0)
    bkg = 1.0 + _background(w, img.shape)
    # away from the star the model is linear: bilinear resampling reproduces it exactly
    yy, xx = np.mgrid[0:120, 0:120]
    x, y = w.world_to_pixel_values(STAR[0], STAR[1])
    far = np.hypot(xx - x, yy - y) > 20
    assert np.max(np.abs(img - truth)[far]) < 1e-3
    ix, iy = int(round(float(x))), int(round(float(y)))
    box = np.s_[iy - 15:iy + 16, ix - 15:ix + 16]
    assert abs(np.sum(img[box] - bkg[box]) / STAR[2] - 1) < 0.01
    assert (tmp_path / "cut.png").stat().st_size > 1000


def _background(wcs, shape):
    """The linear part of the model (without the constant level)."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    ra, dec = wcs.pixel_to_world_values(xx, yy)
    dx = (ra - STAR[0]) * np.cos(np.radians(STAR[1])) * 3600
    dy = (dec - STAR[1]) * 3600
    return 0.01 * dx + 0.02 * dy


def test_cutout_outside_coadds_is_one_line_error(tmp_path, run):
    repo, _ = _repo_with_patches(tmp_path / "repo")
    p = run("cutout.py", repo.root, "--rerun", "coadd", "--ra", 10.0, "--dec", -30.0,
            "--size", 10, check=2)
    assert "no HSC-I coadd overlaps" in p.stderr and "Traceback" not in p.stderr


def test_color_image_of_a_tract(tmp_path, run):
    repo, tract = _repo_with_patches(tmp_path / "repo", filters=("HSC-I", "HSC-R", "HSC-G"),
                                     levels=(3.0, 2.0, 1.0))
    out = tmp_path / "color.png"
    run("makeColorImage.py", repo.root, "--rerun", "coadd", "--tract", 0, "--filters",
        "HSC-I", "HSC-R", "HSC-G", "--out", out, "--stretch", 5, check=0)
    import matplotlib.image

    rgb = matplotlib.image.imread(out)
    ny, nx = tract.bbox.shape
    assert rgb.shape[:2] == (ny, nx)
    # the sky is brightest in I (red), faintest in G (blue): a red-dominated image
    r, g, b = (rgb[..., i].mean() for i in range(3))
    assert r > g > b
