"""Tract and patch geometry: property-based tiling, borders, RA wrap, poles, lookups."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tractpatch.skymap import Box, DiscreteSkyMap, DiscreteSkyMapConfig, TractInfo
from tractpatch.skymap.sphere import bounding_circle, offset, separation
from tractpatch.skymap.tract import TractGeometry

GEOM = TractGeometry()  # 0.168"/pix, TAN, 4000x4000 patches, border 100


def test_box_from_float_is_lsst_expand():
    # pixel i covers [i-0.5, i+0.5): a float box [-0.4, 9.6] touches pixels 0..10
    assert Box.from_float(-0.4, -0.6, 9.6, 9.4) == Box(0, -1, 11, 10)
    b = Box(0, 0, 10, 20)
    assert b.shape == (20, 10) and b.grow(2) == Box(-2, -2, 12, 22)
    assert b.clip(Box(5, 5, 50, 50)) == Box(5, 5, 10, 20)
    assert b.clip(Box(20, 0, 30, 5)).is_empty


def test_explicit_tract_by_hand():
    # radius 0.5 deg at 0.168"/pix: the offset points lie tan(0.5 deg) from the centre
    t = TractInfo.explicit(0, 10.0, 20.0, 0.5, 0.0, GEOM)
    half = math.degrees(math.tan(math.radians(0.5))) * 3600 / 0.168
    width = math.ceil(half - 0.5) + 1 - math.floor(-half + 0.5)
    n = math.ceil(width / 4000)
    assert t.num_patches == (n, n) == (6, 6)
    assert t.bbox == Box(0, 0, 24000, 24000)
    # the centre sits at the middle of the grown box: minimum moved by (24000-width)//2
    x0 = math.floor(-half + 0.5) - (24000 - width) // 2
    assert t.wcs.wcs.crpix[0] - 1 == pytest.approx(-x0)
    x, y = t.sky_to_pixel(10.0, 20.0)
    assert (x[0], y[0]) == pytest.approx((-x0, -x0))
    # East left: RA grows toward -x
    assert t.corners()[0][0] > t.corners()[1][0]


def test_patch_boxes_and_outer_wcs():
    t = TractInfo.explicit(3, 150.0, 2.0, 0.7, 0.0, GEOM)
    p = t.patch(1, 2)
    assert p.name == "1,2"
    assert p.inner_bbox == Box(4000, 8000, 8000, 12000)
    assert p.outer_bbox == Box(3900, 7900, 8100, 12100)
    assert p.outer_shape == (4200, 4200)
    corner = t.patch(0, 0)
    assert corner.outer_bbox == Box(0, 0, 4100, 4100)  # clipped at the tract edge
    # outer_wcs pixel (0,0) is tract pixel (3900, 7900)
    ra1, dec1 = p.outer_wcs.wcs_pix2world([[0.0, 0.0]], 0)[0]
    ra2, dec2 = t.wcs.wcs_pix2world([[3900.0, 7900.0]], 0)[0]
    assert (ra1, dec1) == pytest.approx((ra2, dec2), abs=1e-12)
    with pytest.raises(IndexError):
        t.patch(t.num_patches[0], 0)


tract_params = st.tuples(
    st.floats(0.0, 359.999), st.floats(-89.5, 89.5), st.floats(0.05, 1.2),
    st.sampled_from([(4000, 4000), (1000, 3000), (2500, 2500)]),
    st.sampled_from([0, 50, 100]), st.sampled_from([0.0, 30.0]))


@settings(max_examples=25, deadline=None)
@given(tract_params, st.integers(0, 2**31 - 1))
def test_every_inner_point_in_exactly_one_patch(params, seed):
    ra, dec, radius, dims, border, rot = params
    geom = TractGeometry(0.168, "TAN", rot, dims, border)
    t = TractInfo.explicit(0, ra, dec, radius, 0.0, geom)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.49, t.bbox.x1 - 0.51, 300)
    y = rng.uniform(-0.49, t.bbox.y1 - 0.51, 300)
    sra, sdec = t.pixel_to_sky(x, y)
    assert np.all(t.contains(sra, sdec))
    px, py = t.patch_indices(sra, sdec)
    ix, iy = np.floor(x + 0.5), np.floor(y + 0.5)
    count = np.zeros(len(x), int)
    for p in t.patches():
        inside = p.inner_bbox.contains(ix, iy)
        count += inside
        assert np.all((px[inside] == p.index[0]) & (py[inside] == p.index[1]))
    assert np.all(count == 1)
    # inner boxes tile the tract exactly
    assert sum(p.inner_bbox.width * p.inner_bbox.height for p in t.patches()) == \
        t.bbox.width * t.bbox.height


@settings(max_examples=25, deadline=None)
@given(tract_params)
def test_neighbouring_outer_boxes_overlap_by_twice_the_border(params):
    ra, dec, radius, dims, border, rot = params
    t = TractInfo.explicit(0, ra, dec, radius, 0.0,
                           TractGeometry(0.168, "TAN", rot, dims, border))
    nx, ny = t.num_patches
    for p in t.patches():
        x, y = p.index
        assert t.bbox.contains_box(p.outer_bbox)
        if x + 1 < nx:
            q = t.patch(x + 1, y)
            assert p.outer_bbox.x1 - q.outer_bbox.x0 == 2 * border
        if y + 1 < ny:
            q = t.patch(x, y + 1)
            assert p.outer_bbox.y1 - q.outer_bbox.y0 == 2 * border


def _ring(ra, dec, r, n=12):
    pts = [offset(ra, dec, b, r) for b in np.linspace(0, 360, n, endpoint=False)]
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


@pytest.mark.parametrize("ra0", [359.9, 0.05])
def test_ra_wrap(ra0):
    ra, dec = _ring(ra0, 10.0, 0.4)
    assert ra.min() < 1 and ra.max() > 359  # the field straddles RA 0/360
    cra, cdec, radius = bounding_circle(ra, dec)
    assert separation(cra, cdec, ra0, 10.0) < 1e-6
    assert radius == pytest.approx(0.4, abs=1e-9)
    t = TractInfo.explicit(0, cra, cdec, radius, 0.0, GEOM)
    assert np.all(t.contains(ra, dec))
    assert t.contains(0.0, 10.0) and t.contains(359.95, 10.0)
    # both sides of RA 0 land in patches whose pixel x order follows RA (East left)
    pw, pe = t.find_patch(359.7, 10.0), t.find_patch(0.3 if ra0 > 1 else 0.4, 10.0)
    assert pw.index[0] > pe.index[0]
    assert not t.contains(180.0, 10.0)


@pytest.mark.parametrize("pole", [89.9, -89.95])
def test_fields_at_the_poles(pole):
    ra, dec = _ring(123.0, pole, 0.5, n=16)
    cra, cdec, radius = bounding_circle(ra, dec)
    assert separation(cra, cdec, 123.0, pole) < 1e-6
    sm = DiscreteSkyMap(DiscreteSkyMapConfig(raList=[cra], decList=[cdec],
                                             radiusList=[radius]))
    t = sm[0]
    assert np.all(t.contains(ra, dec))
    assert t.contains(0.0, math.copysign(90.0, pole))
    # patches overlapping the whole field cover every vertex's patch
    names = {p.name for p in t.patches_overlapping(ra, dec)}
    px, py = t.patch_indices(ra, dec)
    assert {f"{a},{b}" for a, b in zip(px, py)} <= names


def test_patches_overlapping_polygon_and_tract_overlap():
    t = TractInfo.explicit(0, 30.0, -5.0, 0.6, 0.0, GEOM)
    # a small square around the centre of patch (2,3)'s inner box
    p = t.patch(2, 3)
    cx = (p.inner_bbox.x0 + p.inner_bbox.x1) / 2
    cy = (p.inner_bbox.y0 + p.inner_bbox.y1) / 2
    xs = np.array([cx - 100, cx + 100, cx + 100, cx - 100])
    ys = np.array([cy - 100, cy - 100, cy + 100, cy + 100])
    ra, dec = t.pixel_to_sky(xs, ys)
    assert [q.name for q in t.patches_overlapping(ra, dec)] == ["2,3"]
    # a square across the corner between 4 patches' inner boxes
    x0, y0 = p.inner_bbox.x0, p.inner_bbox.y0
    ra, dec = t.pixel_to_sky(np.array([x0 - 10, x0 + 10, x0 + 10, x0 - 10]),
                             np.array([y0 - 10, y0 - 10, y0 + 10, y0 + 10]))
    assert sorted(q.name for q in t.patches_overlapping(ra, dec, outer=False)) == \
        ["1,2", "1,3", "2,2", "2,3"]
    # 40-60 pixels left of patch (2,3): inside (1,3)'s inner box and (2,3)'s outer box
    ra, dec = t.pixel_to_sky(np.array([x0 - 60, x0 - 40, x0 - 40, x0 - 60]),
                             np.array([cy, cy, cy + 20, cy + 20]))
    assert [q.name for q in t.patches_overlapping(ra, dec)] == ["1,3", "2,3"]
    assert [q.name for q in t.patches_overlapping(ra, dec, outer=False)] == ["1,3"]
    far_ra, far_dec = _ring(200.0, 40.0, 0.1)
    assert t.patches_overlapping(far_ra, far_dec) == [] and not t.overlaps(far_ra, far_dec)
    # a point on the other side of the sky has no TAN pixel: not in the tract
    assert not t.contains(210.0, 5.0)
    with pytest.raises(LookupError):
        t.find_patch(210.0, 5.0)


def test_bounding_circle_is_sphgeom_centroid():
    # a symmetric square of corners: the centroid is its centre, the radius the
    # distance to a corner
    ra = np.array([9.0, 11.0, 11.0, 9.0])
    dec = np.array([-1.0, -1.0, 1.0, 1.0])
    cra, cdec, r = bounding_circle(ra, dec)
    assert (cra, cdec) == pytest.approx((10.0, 0.0), abs=1e-12)
    assert r == pytest.approx(separation(10.0, 0.0, 9.0, 1.0), abs=1e-12)
    # interior points do not move it (only the hull counts)
    cra2, cdec2, r2 = bounding_circle(np.r_[ra, 10.2, 9.5], np.r_[dec, 0.3, -0.2])
    assert (cra2, cdec2, r2) == pytest.approx((cra, cdec, r), abs=1e-12)
