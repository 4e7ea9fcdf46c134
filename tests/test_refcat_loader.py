"""Reference-catalog queries: cones and polygons over many shards and across RA=0 against
brute force, proper motion against hand computations, colour terms against hand
computations, clear errors."""
from __future__ import annotations

import glob

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table, vstack

from tractpatch.errors import DataQualityError, UserError
from tractpatch.refcat.ingest import IngestRefCatConfig, ingest_catalog
from tractpatch.refcat.loader import load_polygon, load_region
from tractpatch.refcat.shards import ShardScheme

SIM = dict(ra_err_name="ra_err", dec_err_name="dec_err", pm_ra_name="pmra",
           pm_dec_name="pmdec", pm_ra_err_name="pmra_err", pm_dec_err_name="pmdec_err",
           epoch_name="epoch", epoch_format="mjd", epoch_scale="tai",
           mag_column_list=list("grizy"), mag_err_column_map={b: f"{b}_err" for b in "grizy"},
           photometric_system="ps1")


def _table(ra, dec, pmra=None, pmdec=None, epoch=57388.0, mags=None):
    n = len(ra)
    t = Table()
    t["ra"], t["dec"] = np.asarray(ra, float), np.asarray(dec, float)
    t["ra_err"] = np.full(n, 1.0)
    t["dec_err"] = np.full(n, 2.0)
    t["pmra"] = np.zeros(n) if pmra is None else np.asarray(pmra, float)
    t["pmdec"] = np.zeros(n) if pmdec is None else np.asarray(pmdec, float)
    t["pmra_err"] = np.full(n, 0.3)
    t["pmdec_err"] = np.full(n, 0.4)
    t["epoch"] = np.full(n, epoch)
    for k, b in enumerate("grizy"):
        t[b] = np.full(n, 20.0 - 0.5 * k) if mags is None else np.asarray(mags[b], float)
        t[f"{b}_err"] = np.full(n, 0.01)
    return t


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """8000 random stars in a 6x6 deg box straddling RA=0 at Dec 30, nside 32 shards."""
    root = tmp_path_factory.mktemp("field")
    rng = np.random.default_rng(42)
    n = 8000
    ra = rng.uniform(-3, 3, n) % 360.0
    dec = rng.uniform(27, 33, n)
    t = _table(ra, dec)
    t.write(root / "field.fits")
    ingest_catalog(root, [root / "field.fits"], "field",
                   IngestRefCatConfig(**SIM, shard_nside=32))
    return root, t


@pytest.mark.parametrize("ra0,dec0,radius", [(0.0, 30.0, 2.5), (359.2, 28.5, 1.3),
                                              (1.7, 31.6, 2.0), (358.0, 30.0, 0.1),
                                              (-0.5, 30.0, 1.0)])
def test_cone_equals_brute_force(field, ra0, dec0, radius):
    root, t = field
    scheme = ShardScheme(32)
    # the cone spans several shards (and RA=0 for most cases)
    pix = scheme.pixels_of(np.radians(t["ra"]), np.radians(t["dec"]))
    sep = SkyCoord(t["ra"], t["dec"], unit="deg").separation(
        SkyCoord(ra0, dec0, unit="deg")).deg
    expected = np.flatnonzero(sep <= radius)
    if radius > 1:
        assert len(np.unique(pix[expected])) >= 4
    got = load_region(root, "field", ra0, dec0, radius)
    assert sorted(got["id"]) == sorted(expected.tolist())
    np.testing.assert_allclose(np.sort(got["ra"]), np.sort(t["ra"][expected]), atol=1e-12)
    assert got["ra"].unit == u.deg and got["ra_err"].unit == u.mas
    np.testing.assert_allclose(got["dec_err"], 2.0)


def test_polygon_equals_brute_force(field):
    root, t = field
    # a quadrilateral across RA=0 (convex on the sphere): vertices counter-clockwise
    rav = np.array([357.5, 2.0, 2.6, 358.2])
    decv = np.array([28.0, 28.4, 31.8, 32.2])
    got = load_polygon(root, "field", rav, decv)
    v = SkyCoord(rav, decv, unit="deg").cartesian.xyz.value.T
    p = SkyCoord(t["ra"], t["dec"], unit="deg").cartesian.xyz.value.T
    inside = np.ones(len(t), dtype=bool)
    for i in range(4):  # inside = left of every great-circle edge
        inside &= p @ np.cross(v[i], v[(i + 1) % 4]) > 0
    assert inside.sum() > 500
    assert sorted(got["id"]) == sorted(np.flatnonzero(inside).tolist())


def test_no_stars_is_a_clear_error(field):
    root, _ = field
    with pytest.raises(DataQualityError, match=r"no stars within 0\.5 deg of .*120\.0.*"
                       r"nearest shard"):
        load_region(root, "field", 120.0, -40.0, 0.5)
    with pytest.raises(UserError, match=r"no reference catalog 'nope'.*available: field"):
        load_region(root, "nope", 0.0, 30.0, 1.0)
    with pytest.raises(DataQualityError, match="covers the area, but no star"):
        load_region(root, "field", 0.0, 30.0, 1e-5)


def test_proper_motion_hand_computation(tmp_path):
    # pmra=1000 mas/yr (RA*cos dec), pmdec=-500 mas/yr for 10 Julian years at dec 60:
    # dRA = 10 arcsec / cos 60 = 20 arcsec, dDec = -5 arcsec (second order < 0.5 mas)
    t = _table([10.0], [60.0], [1000.0], [-500.0], epoch=51544.5)
    t.write(tmp_path / "pm.fits")
    ingest_catalog(tmp_path, [tmp_path / "pm.fits"], "pm", IngestRefCatConfig(**SIM))
    epoch = 51544.5 + 10 * 365.25
    got = load_region(tmp_path, "pm", 10.0, 60.0, 0.01, epoch_mjd=epoch)
    assert len(got) == 1
    assert abs((got["ra"][0] - 10.0) * 3600e3 - 20000.0) < 1.0  # mas of RA
    assert abs((got["dec"][0] - 60.0) * 3600e3 + 5000.0) < 1.0
    # exact great-circle motion: 11.1803 arcsec at position angle atan2(1000, -500)
    exact = SkyCoord(10.0, 60.0, unit="deg").directional_offset_by(
        np.arctan2(1000.0, -500.0) * u.rad, np.hypot(1000.0, -500.0) * 10 * u.mas)
    assert SkyCoord(got["ra"][0], got["dec"][0], unit="deg").separation(exact).to(u.mas) \
        < 1e-3 * u.mas
    # errors grow by pm_err*dt: hypot(1, 0.3*10) and hypot(2, 0.4*10) mas
    np.testing.assert_allclose(got["ra_err"][0], np.hypot(1.0, 3.0), rtol=1e-9)
    np.testing.assert_allclose(got["dec_err"][0], np.hypot(2.0, 4.0), rtol=1e-9)
    assert got["epoch"][0] == epoch and got["ref_epoch"][0] == 51544.5
    # without an epoch the catalog positions come back unchanged
    same = load_region(tmp_path, "pm", 10.0, 60.0, 0.01)
    assert same["ra"][0] == pytest.approx(10.0, abs=1e-12)


def test_fast_star_from_a_far_shard_is_found(tmp_path):
    # 3 deg east of the centre on the equator, moving 2.6 deg west in 20 years
    pm = -2.6 * 3600e3 / 20
    t = _table([3.0, 0.3], [0.0, 0.0], [pm, 0.0], [0.0, 0.0], epoch=51544.5)
    t.write(tmp_path / "fast.fits")
    ingest_catalog(tmp_path, [tmp_path / "fast.fits"], "fast",
                   IngestRefCatConfig(**SIM, shard_nside=64))
    scheme = ShardScheme(64)
    star_pix = scheme.pixels_of(np.radians([3.0]), [0.0])[0]
    assert star_pix not in scheme.pixels_in_cone(0.0, 0.0, 0.6)  # needs the grown search
    got = load_region(tmp_path, "fast", 0.0, 0.0, 0.6, epoch_mjd=51544.5 + 20 * 365.25)
    assert sorted(got["id"]) == [0, 1]
    i = list(got["id"]).index(0)
    assert got["ra"][i] == pytest.approx(0.4, abs=1e-9)
    # at the catalog epoch the fast star is outside
    assert list(load_region(tmp_path, "fast", 0.0, 0.0, 0.6)["id"]) == [1]


def test_colour_terms_hand_computation(tmp_path):
    mags = {"g": [20.3], "r": [20.0], "i": [19.5], "z": [19.3], "y": [19.2]}
    t = _table([150.0], [2.0], mags=mags)
    t.write(tmp_path / "c.fits")
    ingest_catalog(tmp_path, [tmp_path / "c.fits"], "sim_ps1", IngestRefCatConfig(**SIM))
    got = load_region(tmp_path, "sim_ps1", 150.0, 2.0, 0.01, filter_name="HSC-R",
                      instrument="hsc")
    # obs_subaru ps1* HSC-R: primary r, secondary i, c0=-0.000294 c1=-0.005458 c2=-0.009451
    m = 20.0 - 0.000294 - 0.005458 * 0.5 - 0.009451 * 0.25
    assert got["flux"][0] == pytest.approx(10 ** (-0.4 * (m - 31.4)), rel=1e-10)
    # error: d m/d r = 1 + c1 + 2 c2 C, d m/d i = -(c1 + 2 c2 C), 0.01 mag each
    d = -0.005458 + 2 * -0.009451 * 0.5
    sig = np.hypot((1 + d) * 0.01, d * 0.01)
    assert got["flux_err"][0] == pytest.approx(got["flux"][0] * sig * np.log(10) / 2.5,
                                               rel=1e-9)
    # HSC-Y uses y and z: C = y - z = -0.1
    got = load_region(tmp_path, "sim_ps1", 150.0, 2.0, 0.01, filter_name="HSC-Y",
                      instrument="hsc")
    m = 19.2 - 0.001952 + 0.199570 * -0.1 + 0.216821 * 0.01
    assert got["flux"][0] == pytest.approx(10 ** (-0.4 * (m - 31.4)), rel=1e-10)
    # a filter named like a band is that band
    got = load_region(tmp_path, "sim_ps1", 150.0, 2.0, 0.01, filter_name="i")
    assert got["flux"][0] == pytest.approx(10 ** (-0.4 * (19.5 - 31.4)), rel=1e-10)
    # unknown filter: one line naming it and the remedy
    with pytest.raises(UserError) as exc:
        load_region(tmp_path, "sim_ps1", 150.0, 2.0, 0.01, filter_name="VR", instrument="hsc")
    msg = str(exc.value)
    assert "'VR'" in msg and "colorterms.yaml" in msg and "\n" not in msg
    # user terms in ROOT/ref_cats/colorterms.yaml
    (tmp_path / "ref_cats" / "colorterms.yaml").write_text(
        "decam:\n  ps1*:\n    VR: {primary: r, secondary: g, c0: 0.1, c1: 0.2}\n")
    got = load_region(tmp_path, "sim_ps1", 150.0, 2.0, 0.01, filter_name="VR",
                      instrument="decam")
    m = 20.0 + 0.1 + 0.2 * (20.0 - 20.3)
    assert got["flux"][0] == pytest.approx(10 ** (-0.4 * (m - 31.4)), rel=1e-10)


def test_gaia_chunks_across_shards(tmp_path, shared_data):
    """Real Gaia DR2 stars at nside 1024 (3.4 arcmin shards): cone = brute force."""
    files = sorted(glob.glob(str(shared_data / "legacysurvey-decam-cutouts/testcase3/gaia/"
                                               "*.fits")))
    ingest_catalog(tmp_path, files, "gaia", IngestRefCatConfig(
        id_name="source_id", pm_ra_name="pmra", pm_dec_name="pmdec",
        epoch_name="ref_epoch", shard_nside=1024))
    raw = vstack([Table.read(f) for f in files])
    sep = SkyCoord(raw["ra"], raw["dec"], unit="deg").separation(
        SkyCoord(244.72, 12.0, unit="deg")).deg
    expected = set(np.asarray(raw["source_id"][sep <= 0.1]).tolist())
    got = load_region(tmp_path, "gaia", 244.72, 12.0, 0.1)
    assert set(got["id"].tolist()) == expected and len(expected) > 200
    pix = ShardScheme(1024).pixels_of(np.radians(got["ra"]), np.radians(got["dec"]))
    assert len(np.unique(pix)) > 10
