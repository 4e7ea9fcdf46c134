"""The all-sky presets against known answers: HSC-SSP tracts and PS1 skycells."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from tractpatch.skymap import PS1RingsSkyMap, RingsSkyMap, hsc_rings_v1, ps1_rings_v3
from tractpatch.skymap.ps1 import read_grid
from tractpatch.skymap.sphere import offset, separation


@pytest.fixture(scope="module")
def ssp():
    return RingsSkyMap(hsc_rings_v1())


@pytest.fixture(scope="module")
def ssp_v0():
    return RingsSkyMap(hsc_rings_v1(version=0))


@pytest.fixture(scope="module")
def ps1():
    return PS1RingsSkyMap(ps1_rings_v3())


def _circle(ra, dec, r, n=36):
    pts = [offset(ra, dec, b, r) for b in np.arange(0, 360, 360 / n)]
    return [p[0] for p in pts], [p[1] for p in pts]


def test_hsc_rings_v1_layout(ssp):
    assert len(ssp) == 18938
    t = ssp[9813]
    assert t.center == (150.2479338842975, 2.2314049586776834)
    assert t.num_patches == (9, 9)
    assert (t.bbox.width, t.bbox.height) == (36000, 36000)
    # SSP coadd headers: tract reference pixel CRPIX = 18000 (FITS), 0.168"/pix
    assert list(t.wcs.wcs.crpix) == [18000.0, 18000.0]
    assert t.wcs.wcs.cd[0, 0] == pytest.approx(-0.168 / 3600)
    # the pole caps are tracts too
    assert ssp.tract_center(0) == (0.0, -90.0) and ssp.tract_center(18937) == (0.0, 90.0)
    # the fast (shared-box) tracts equal the step-by-step construction
    for i in (0, 1, 11, 9813, 18937):
        a, b = ssp[i], ssp.explicit_tract(i)
        assert a.bbox == b.bbox and a.num_patches == b.num_patches
        assert np.allclose(a.corners(), b.corners(), atol=1e-10)


def test_hsc_ssp_ultradeep_tracts(ssp):
    # the COSMOS centre lies in tract 9813; the UD-COSMOS tracts are the 7 nearest
    assert ssp.find_tract(150.12, 2.21).tract_id == 9813
    centres = np.array([ssp.tract_center(i) for i in range(len(ssp))])
    d = separation(150.12, 2.21, centres[:, 0], centres[:, 1])
    assert set(np.argsort(d)[:7].tolist()) == {9570, 9571, 9812, 9813, 9814, 10054, 10055}
    ud_cosmos = ssp.find_tract_patch_list(*_circle(150.12, 2.21, 0.9))
    assert {t.tract_id for t, _ in ud_cosmos} == {9570, 9571, 9812, 9813, 9814, 10054,
                                                 10055}
    # SXDS: its centre is in 8523; an HSC field of view (0.75 deg radius) there
    # overlaps exactly the UD-SXDS tracts
    assert ssp.find_tract(34.5, -5.1).tract_id == 8523
    sxds = ssp.find_tract_patch_list(*_circle(34.5, -5.1, 0.75))
    assert {t.tract_id for t, _ in sxds} == {8523, 8524, 8765, 8766}
    # RC2: tract 9615 is in GAMA15H (216.3, 0.7), 9697 in VVDS (337.8, 0.7)
    assert ssp.find_tract(216.3, 0.7).tract_id == 9615
    assert ssp.find_tract(337.8, 0.7).tract_id == 9697
    assert ssp.find_tract(150.12, 2.21).contains(150.12, 2.21)


def test_every_tract_centre_finds_its_tract(ssp, ssp_v0):
    centres = np.array([ssp.tract_center(i) for i in range(len(ssp))])
    ids = np.arange(len(ssp))
    assert np.array_equal(ssp.find_tract_ids(centres[:, 0], centres[:, 1]), ids)
    # version 0: identical numbering except for the tracts at RA = 0
    v0 = ssp_v0.find_tract_ids(centres[:, 0], centres[:, 1])
    differ = np.nonzero(v0 != ids)[0]
    assert np.all(centres[differ, 0] == 0.0)
    assert 9813 not in differ and 8523 not in differ
    # the original bug: tract 11 (= 1 + tracts in ring 0) repeats tract 1 ...
    assert int(ssp.ring_nums[0]) == 10
    assert ssp_v0.tract_center(11) == pytest.approx(ssp_v0.tract_center(1))
    # ... and the tract at RA 0 of ring 1 is numbered one ring late
    assert int(differ[0]) == 11 and int(v0[11]) == 11 + int(ssp.ring_nums[1])


def test_ps1_table_is_the_stsci_grid(shared_data):
    with fits.open(shared_data / "ps1-rings-v3" / "ps1grid.fits") as hdul:
        tab = hdul[1].data
    zones = read_grid()
    assert [z.zone for z in zones] == list(tab["ZONE"])
    assert [z.projcell for z in zones] == list(tab["PROJCELL"])
    assert [z.nband for z in zones] == list(tab["NBAND"])
    assert np.allclose([z.dec_max for z in zones], tab["DEC_MAX"])
    assert np.allclose([z.crpix1 for z in zones], tab["CRPIX1"])


def test_ps1_known_skycells(ps1):
    pairs = {
        (33.639840, -0.766690): "skycell.1240.080",  # Mrk 590
        (283.3963, 33.0292): "skycell.2069.026",  # M57
        (83.63321, 22.01446): "skycell.1784.059",  # Crab Nebula
        (332.600451657, 2.19980905757): "skycell.1405.053",  # its published centre
        # NGC 7222 (NED J2000 22:10:51.7 +02:06:20)
        (332.71542, 2.10556): "skycell.1405.053",
    }
    ra = [k[0] for k in pairs]
    dec = [k[1] for k in pairs]
    assert ps1.skycell_names(ra, dec) == list(pairs.values())
    # the generic tract/patch lookup agrees away from skycell edges
    for (r, d), name in pairs.items():
        t = ps1.find_tract(r, d)
        p = t.find_patch(r, d)
        assert f"skycell.{t.tract_id:04d}.{10 * p.index[1] + p.index[0]:03d}" == name


def test_ps1_skycell_geometry(ps1):
    assert len(ps1) == 2643 - 635 + 1
    t = ps1[1405]
    assert t.center == pytest.approx((332.0, 2.0))
    p = t.patch(3, 5)
    # the skycell image is 6240 x 6243 pixels and is exactly the patch outer box
    assert p.outer_shape == (6243, 6240)
    assert p.outer_bbox.x0 == 3 * 5760 and p.outer_bbox.y0 == 5 * 5763
    # neighbouring skycells overlap by 480 pixels
    assert t.patch(3, 5).outer_bbox.x1 - t.patch(4, 5).outer_bbox.x0 == 480
    # published centre of skycell.1405.053 vs the middle pixel of our 6240 x 6243
    # image: within one 0.25" pixel per axis (the service rounds its centre pixel
    # differently)
    ra, dec = ps1.skycell_center(1405, 53)
    assert abs(ra - 332.600451657) * np.cos(np.radians(2.2)) < 1.1 * 0.25 / 3600
    assert abs(dec - 2.19980905757) < 1.1 * 0.25 / 3600
    # the skycell's FITS CRPIX: CRPIX1 + (5 - k) * pitch
    w = p.outer_wcs
    assert w.wcs.crpix[0] == pytest.approx(240.0 + 2 * 5760)
    assert w.wcs.crpix[1] == pytest.approx(242.0)
    # south of the survey
    assert ps1.skycell_names([10.0], [-40.0]) == [""]
    # the polar cap cell holds the pole
    assert ps1.skycell_names([0.0], [90.0])[0].startswith("skycell.2643.")
