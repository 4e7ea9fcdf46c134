"""Artefact rejection (doArtifactRejection, LSST's CompareWarp): a trail in one of 2 or
5 inputs is masked REJECTED in that input alone and the coadd equals the trail-free
stack; stars common to all inputs (also in different seeing) keep their fluxes; pure
noise loses nothing; bands with margins give the same result as one band."""
from __future__ import annotations

import numpy as np
import pytest

from tractpatch.coadd.artifacts import ArtifactParams, detect_artifacts
from tractpatch.coadd.assemble import CcdWarp, assemble
from tractpatch.coadd.config import CoaddDriverConfig
from tractpatch.image import MaskPlanes

SHAPE = (220, 260)
STARS = [(40.0, 50.0, 3e4), (60.3, 180.7, 8e3), (150.5, 70.2, 2e4), (170.2, 200.4, 5e4),
         (110.0, 130.0, 1.2e4)]
TRAIL_PEAK, TRAIL_SIGMA = 12.0, 1.5   # in units of the per-input noise (1.0)


def _stars(sigmas, shape=SHAPE):
    """Gaussian stars (flux per pixel) of width ``sigmas[k]`` for each input."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    out = np.zeros((len(sigmas),) + shape)
    for k, s in enumerate(sigmas):
        for y, x, f in STARS:
            out[k] += f / (2 * np.pi * s * s) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2)
                                                       / (2 * s * s))
    return out


def _trail_distance(shape=SHAPE):
    """Distance of every pixel from the trail line (through (100, 30), 35 degrees): it
    crosses the star at (110, 130)'s wings region and the band borders."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    th = np.radians(35.0)
    return np.abs(-(xx - 30.0) * np.sin(th) + (yy - 100.0) * np.cos(th))


def _inputs(k, trail_input=None, sigmas=None, seed=1):
    rng = np.random.default_rng(seed)
    sigmas = sigmas or [2.0] * k
    model = _stars(sigmas)
    noise = rng.normal(0.0, 1.0, model.shape)
    clean = (model + noise).astype(np.float32)
    imgs = clean.copy()
    if trail_input is not None:
        imgs[trail_input] += (TRAIL_PEAK * np.exp(-0.5 * (_trail_distance() / TRAIL_SIGMA)
                                                  ** 2)).astype(np.float32)
    var = np.ones_like(imgs)
    msk = np.zeros(imgs.shape, np.int32)
    return imgs, clean, var, msk


def _warps(imgs, var, msk):
    return [CcdWarp(visit=100 + k, ccd=0, bbox=(0, 0, SHAPE[1], SHAPE[0]), files={},
                    good_pixels=imgs[k].size, median_variance=1.0, exptime=30.0,
                    transform_error=0.0,
                    arrays=dict(image=imgs[k], variance=var[k], mask=msk[k].copy()))
            for k in range(len(imgs))]


def _coadd(imgs, var, msk, **cfg):
    # a small stack memory: bands of ~40 rows, so the trail crosses band borders
    config = CoaddDriverConfig(maxStackMemoryMB=cfg.pop("mb", 0.2), **cfg)
    return assemble(_warps(imgs, var, msk), SHAPE, config, MaskPlanes())


def _aperture(img, y, x, r=12):
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    return float(img[(yy - y) ** 2 + (xx - x) ** 2 <= r * r].sum())


@pytest.mark.parametrize("k", [2, 5])
def test_trail_in_one_input_rejected_and_coadd_equals_trail_free(k):
    imgs, clean, var, msk = _inputs(k, trail_input=1)
    d = _trail_distance()
    found = detect_artifacts(imgs, var, msk, MaskPlanes().bitmask("NO_DATA"))
    # the trail input: every pixel where the trail is above 1.6 sigma (d < 2 trail
    # sigmas), and nothing far from it; the other inputs: nothing at all
    assert found[1][d < 2 * TRAIL_SIGMA].all()
    assert not found[1][d > 9].any()
    assert not np.delete(found, 1, axis=0).any()

    res = _coadd(imgs, var, msk, doArtifactRejection=True)
    ref = _coadd(clean, var, msk)       # the same inputs without the trail
    mp = res.mask_planes
    rej = (res.mask & mp.bitmask("REJECTED")) != 0
    assert res.rows_per_band < SHAPE[0] // 3   # several bands with margins
    assert rej[d < 2 * TRAIL_SIGMA].all() and not rej[d > 9].any()
    clipped = (res.mask & mp.bitmask("CLIPPED")) != 0   # (k = 5: noise, ~0.3 %)
    assert np.all(res.nimage[rej & ~clipped] == k - 1)
    assert np.all(res.nimage[~rej & ~clipped] == k) and clipped.mean() < 0.01
    assert res.artifact_pixels[101] == rej.sum() and res.artifact_pixels[100] == 0
    # off the mask the coadd is the trail-free one plus what is left of the trail's
    # Gaussian wings there (below 1.6 sigma of one input), divided among k inputs; on
    # it, the mean of the other inputs: within their noise of the trail-free mean
    wing = TRAIL_PEAK * np.exp(-0.5 * (d / TRAIL_SIGMA) ** 2) / k
    ok = np.isclose(res.image, ref.image + wing, atol=1e-4) & ~rej
    assert ok.sum() >= (~rej).sum() - clipped.sum() and wing[~rej].max() < 1.6 / k
    others = np.delete(clean, 1, axis=0).mean(axis=0)
    good = rej & ~clipped
    assert np.allclose(res.image[good], others[good], atol=1e-4)
    z = (res.image - ref.image)[rej] / np.sqrt(1.0 / (k - 1) - 1.0 / k)
    assert abs(np.median(z)) < 0.1 and np.std(z) < 1.2
    # the trail's flux is gone: its summed excess over the trail-free coadd < 0.5 %
    trail_sum = TRAIL_PEAK * np.sqrt(2 * np.pi) * TRAIL_SIGMA * rej.sum() / 9.0
    assert abs((res.image - ref.image)[rej].sum()) < 0.005 * trail_sum * k
    # without rejection (2 inputs: MEANCLIP cannot clip) the trail survives
    if k == 2:
        plain = _coadd(imgs, var, msk)
        assert np.median((plain.image - ref.image)[d < 0.7]) > 0.4 * TRAIL_PEAK


@pytest.mark.parametrize("k", [2, 5])
def test_stars_in_all_inputs_kept_also_in_different_seeing(k):
    # input 0 in 1.5x better seeing (1.3 px against 2.0 px): its star cores are
    # brighter than the template's, but common to all inputs, nothing is cut
    for sigmas in ([2.0] * k, [1.3] + [2.0] * (k - 1)):
        imgs, clean, var, msk = _inputs(k, sigmas=sigmas, seed=7)
        found = detect_artifacts(imgs, var, msk, MaskPlanes().bitmask("NO_DATA"))
        assert not found.any(), (sigmas, found.sum(axis=(1, 2)))
        res = _coadd(imgs, var, msk, doArtifactRejection=True)
        ref = _coadd(imgs, var, msk)
        for y, x, f in STARS:
            a, b = _aperture(res.image, y, x), _aperture(ref.image, y, x)
            assert abs(a / b - 1) < 1e-3
            # and the star's flux is the input flux (noise: ~12 px radius, sigma 1/sqrt(k))
            assert abs(a - f) < 5 * np.sqrt(np.pi * 144 / k) + 1e-3 * f


def test_bright_star_wing_at_the_edge_of_an_input_not_cut():
    # (seen in the mini survey) a bright star in worse seeing in input 0, whose core
    # input 1 does not cover (NO_DATA left of x = 138): on the wings, compared with the
    # sharper input 1 only, input 0 is far above; the star is a template source (the
    # single input's level counts where only one covers), so nothing is cut
    imgs, clean, var, msk = _inputs(2, sigmas=[3.0, 1.8], seed=5)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    for k, s in enumerate([3.0, 1.8]):
        imgs[k] += (2e5 / (2 * np.pi * s * s) * np.exp(-((xx - 130) ** 2 + (yy - 110) ** 2)
                                                     / (2 * s * s))).astype(np.float32)
    msk[1][:, :138] = MaskPlanes().bitmask("NO_DATA")
    assert not detect_artifacts(imgs, var, msk, 1 << 8).any()
    # without the template-source filter the wing would be cut
    assert detect_artifacts(imgs, var, msk, 1 << 8,
                            ArtifactParams(max_source_fraction=1.0))[0].sum() > 20


def test_star_variable_in_majority_kept_and_pure_noise_untouched():
    # pure noise, 5 inputs: no footprint of 20 pixels above 3 sigma with a 5 sigma peak
    rng = np.random.default_rng(3)
    imgs = rng.normal(0, 1, (5,) + SHAPE).astype(np.float32)
    var = np.ones_like(imgs)
    msk = np.zeros(imgs.shape, np.int32)
    assert not detect_artifacts(imgs, var, msk, 1 << 8).any()
    # an extra source at the same place in 3 of 5 inputs (a real brightening): the
    # median follows the majority, nothing is rejected
    add = 40.0 * np.exp(-((np.arange(SHAPE[1]) - 100.0) ** 2)[None, :] / 8.0
                        - ((np.arange(SHAPE[0]) - 90.0) ** 2)[:, None] / 8.0)
    imgs[:3] += add.astype(np.float32)
    assert not detect_artifacts(imgs, var, msk, 1 << 8).any()
    # in 2 of 5 (at most floor(0.4 * 5) = 2 epochs): rejected as an artefact in both;
    # with max_fraction_epochs 0.2 (1 epoch at most) it is kept
    imgs[2] -= add.astype(np.float32)
    found = detect_artifacts(imgs, var, msk, 1 << 8)
    assert found[:2, 90, 100].all() and not found[2:].any()
    assert not detect_artifacts(imgs, var, msk, 1 << 8,
                                ArtifactParams(max_fraction_epochs=0.2)).any()


def test_masked_and_missing_inputs_are_not_compared():
    # the trail input has NO_DATA over the left half and the other input BAD columns:
    # pixels with one valid input are never compared, nothing is flagged there, and the
    # coadd REJECTED only where the trail input had data
    imgs, clean, var, msk = _inputs(2, trail_input=1)
    mp = MaskPlanes()
    msk[1][:, :130] = mp.bitmask("NO_DATA")
    msk[0][:, 200:210] = mp.bitmask("BAD")
    found = detect_artifacts(imgs, var, msk, mp.bitmask("NO_DATA", "BAD"))
    # (growth by 2 pixels reaches into the gap from both sides)
    assert not found[:, :, :130].any() and not found[1][:, 203:207].any()
    d = _trail_distance()
    on = d < 2 * TRAIL_SIGMA
    on[:, :130] = on[:, 200:210] = False
    assert found[1][on].all()
    res = _coadd(imgs, var, msk, doArtifactRejection=True)
    rej = (res.mask & res.mask_planes.bitmask("REJECTED")) != 0
    trail = rej & (d < 9)
    assert not trail[:, :130].any() and trail[on].all()


def test_band_margins_give_the_one_band_result():
    imgs, clean, var, msk = _inputs(5, trail_input=3, seed=11)
    one = _coadd(imgs, var, msk, doArtifactRejection=True, mb=100.0)
    bands = _coadd(imgs, var, msk, doArtifactRejection=True, mb=0.3)
    assert one.rows_per_band == SHAPE[0] and bands.rows_per_band < SHAPE[0] // 2
    assert np.array_equal(one.mask, bands.mask)
    assert np.array_equal(one.image, bands.image)


def test_simulated_survey_trail_rejected_where_two_visits_cover(tmp_path_factory):
    """The simulator's satellite trail (tiny preset, 4 HSC-R visits, as
    test_coadd_e2e): with doArtifactRejection it is masked in the trail visit alone, also
    where only two visits cover it (MEANCLIP leaves it there); stars keep the inputs'
    fluxes (test_coadd_e2e's check, within 1 %)."""
    import re

    from astropy.io import fits
    from astropy.wcs import WCS

    import test_coadd_e2e as e2e
    from conftest import run_cmd
    from tractpatch.image import read_exposure

    root = tmp_path_factory.mktemp("coadd_artifacts")
    demo, repo, calexps = e2e.trail_survey(root)
    p = run_cmd("coaddDriver.py", root, "--rerun", "coadd", "--id", "tract=0",
                "filter=HSC-R", "--no-progress", "--config", "doArtifactRejection=True",
                check=0)
    truth = demo.truth
    trail_visit = next(v for v in truth.visits if truth.visit(v).get("trail"))
    counts = {int(v): int(n) for v, n in re.findall(r"(\d+): (\d+)", p.stderr.split(
        "masked per visit")[1].splitlines()[0])}
    assert set(counts) == set(truth.visits)
    assert counts[trail_visit] > 1000 and sum(counts.values()) == counts[trail_visit]
    # the coadd headers record the masked input pixels of each patch (NARTREJ)
    logged = sum(int(n) for part in p.stderr.split("masked per visit")[1:]
                 for n in re.findall(r"\d+: (\d+)", part.splitlines()[0]))
    headers = sum(fits.getheader(f, "IMAGE")["NARTREJ"]
                  for f in repo.path("deepCoadd", filter="HSC-R", tract=0,
                                     patch="0,0").parent.glob("*.fits"))
    assert headers == logged > 1000
    path = repo.path("deepCoadd", filter="HSC-R", tract=0, patch="0,0")
    with fits.open(path) as h:
        img, var, mask = h["IMAGE"].data, h["VARIANCE"].data, h["MASK"].data
        nimage = h["NIMAGE"].data
        rejected = (mask & (1 << h["MASK"].header["MP_REJECTED"])) != 0
        wcs = WCS(h["IMAGE"].header)
    yy, xx = np.nonzero(nimage >= 1)
    ra, dec = wcs.pixel_to_world_values(xx, yy)
    dist = e2e._trail_distance(truth, ra, dec)
    cover = {}
    for (v, c), cpath in calexps.items():
        e = read_exposure(cpath)
        px, py = e.wcs.world_to_pixel_values(ra, dec)
        inside = (px > 3) & (px < e.shape[1] - 4) & (py > 3) & (py < e.shape[0] - 4)
        cover[v] = cover.get(v, False) | inside
    ncover = sum(cover.values())
    for n in (2, 4):
        on = (dist < 0.7) & cover[trail_visit] & (ncover == n)
        assert on.sum() > 100
        assert rejected[yy[on], xx[on]].mean() > 0.95
        z = img[yy[on], xx[on]] / np.sqrt(var[yy[on], xx[on]])
        assert abs(np.median(z)) < 0.5          # without rejection: 14.6 at n = 2
    # the masked input pixels lie along the trail: fewer than the coadd pixels
    # within 10 px of it
    assert counts[trail_visit] < np.sum(dist < 10)
    e2e.test_stars_at_true_positions_with_input_fluxes(
        dict(truth=truth, path=path, calexps=calexps))
