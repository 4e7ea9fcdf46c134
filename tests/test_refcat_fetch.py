"""fetchReferenceCatalog: tiled, resumable fetches replayed from recorded archive answers
(tests/data/refcat_responses, see make_responses.py there); never the network."""
from __future__ import annotations

import dataclasses
import logging
import socket
import time
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
import yaml
from astropy.coordinates import SkyCoord
from astropy.table import Table

from tractpatch.cli.task import simple_main
from tractpatch.errors import UserError
from tractpatch.refcat import fetch
from tractpatch.refcat.loader import load_region
from tractpatch.refcat.shards import ShardScheme, catalog_dir
from tractpatch.refcat.tasks import _fetch_body

RESPONSES = Path(__file__).parent / "data" / "refcat_responses"


@pytest.fixture(autouse=True)
def _fresh_log_handler():
    """The commands run in-process here attach a log handler to the sys.stderr of the
    moment (pytest's capture); drop it so no later test writes to a closed stream."""
    def drop():
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, "_tractpatch", False)]:
            root.removeHandler(h)

    drop()
    yield
    drop()


@pytest.fixture
def listener():
    """A local TCP port that accepts connections (the reachability probe succeeds)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Replay:
    """Answers cone queries from a recorded table (the rows inside the cone)."""

    def __init__(self, table: Table, ra="ra", dec="dec", fail_at=None):
        self.table, self.ra, self.dec = table, ra, dec
        self.calls: list[tuple[float, float, float]] = []
        self.fail_at = fail_at
        self.coords = SkyCoord(np.asarray(table[ra]), np.asarray(table[dec]), unit="deg")

    def __call__(self, ra, dec, radius, timeout):
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            import requests

            raise requests.exceptions.ConnectionError("Connection reset by peer")
        self.calls.append((ra, dec, radius))
        sep = self.coords.separation(SkyCoord(ra, dec, unit="deg")).deg
        return self.table[sep <= radius]


def _use(monkeypatch, name, query, port):
    svc = dataclasses.replace(fetch.SERVICES[name], host="127.0.0.1", port=port,
                              query=query)
    monkeypatch.setitem(fetch.SERVICES, name, svc)
    return svc


def _stored_ids(root, name):
    from tractpatch.refcat.shards import read_shard, shard_pixels

    d = catalog_dir(root, name)
    return sorted(int(i) for p in shard_pixels(d) for i in read_shard(d / f"{p}.fits")["id"])


def test_gaia_fetch_tiles_resume_and_extend(tmp_path, monkeypatch, listener):
    rec = Table.read(RESPONSES / "gaia_dr3_tap.ecsv")
    replay = Replay(rec)
    _use(monkeypatch, "gaia_dr3", replay, listener)
    ra0, dec0, r = 244.72, 12.0, 0.08
    rep = fetch.fetch_catalog(tmp_path, "gaia_dr3", ra0, dec0, r, tile_nside=512)
    tiles = fetch.tiles_for_cone(ra0, dec0, r, 512)
    assert rep.fetched == len(tiles) == len(replay.calls) >= 4 and rep.skipped == 0
    # what is stored: exactly the recorded stars inside the fetched tiles
    pix = ShardScheme(512).pixels_of(np.radians(rec["ra"]), np.radians(rec["dec"]))
    expected = sorted(np.asarray(rec["source_id"][np.isin(pix, tiles)]).tolist())
    assert _stored_ids(tmp_path, "gaia_dr3") == expected == sorted(
        np.asarray(rec["source_id"][np.isin(pix, rep.tile_ids)]).tolist())
    # the cone query gives the brute-force answer, with DR3 band names and units
    got = load_region(tmp_path, "gaia_dr3", ra0, dec0, r)
    sep = SkyCoord(rec["ra"], rec["dec"], unit="deg").separation(
        SkyCoord(ra0, dec0, unit="deg")).deg
    assert sorted(got["id"].tolist()) == sorted(rec["source_id"][sep <= r].tolist())
    row = rec[rec["source_id"] == got["id"][0]][0]
    assert got["phot_g_mean_flux"][0] == pytest.approx(
        10 ** (-0.4 * (row["phot_g_mean_mag"] - 31.4)), rel=1e-6)
    assert got["ra_err"][0] == pytest.approx(row["ra_error"], rel=1e-6)
    # the same fetch again: nothing is asked
    n_calls = len(replay.calls)
    rep2 = fetch.fetch_catalog(tmp_path, "gaia_dr3", ra0, dec0, r, tile_nside=512)
    assert rep2.fetched == 0 and rep2.skipped == len(tiles) and len(replay.calls) == n_calls
    # a larger area: only the new tiles
    tiles2 = fetch.tiles_for_cone(ra0, dec0, 0.12, 512)
    rep3 = fetch.fetch_catalog(tmp_path, "gaia_dr3", ra0, dec0, 0.12, tile_nside=512)
    assert rep3.fetched == len(set(tiles2) - set(tiles)) > 0
    assert len(replay.calls) == n_calls + rep3.fetched
    info = yaml.safe_load((catalog_dir(tmp_path, "gaia_dr3") / "config.yaml").read_text())
    assert sorted(info["fetch"]["tiles_done"]) == sorted(set(tiles2) | set(tiles))
    assert info["n_stars"] == len(_stored_ids(tmp_path, "gaia_dr3"))
    assert info["has_proper_motion"] and info["photometric_system"] == "gaia"


def test_interrupted_fetch_resumes(tmp_path, monkeypatch, listener):
    rec = Table.read(RESPONSES / "gaia_dr3_tap.ecsv")
    ra0, dec0, r = 244.72, 12.0, 0.08
    full = tmp_path / "full"
    _use(monkeypatch, "gaia_dr3", Replay(rec), listener)
    fetch.fetch_catalog(full, "gaia_dr3", ra0, dec0, r, tile_nside=512)
    broken = Replay(rec, fail_at=2)
    _use(monkeypatch, "gaia_dr3", broken, listener)
    part = tmp_path / "part"
    with pytest.raises(UserError, match=r"ConnectionError.*2 of \d+ new tiles were fetched "
                       r"and kept: run the same command again to resume"):
        fetch.fetch_catalog(part, "gaia_dr3", ra0, dec0, r, tile_nside=512)
    info = yaml.safe_load((catalog_dir(part, "gaia_dr3") / "config.yaml").read_text())
    assert len(info["fetch"]["tiles_done"]) == 2
    resumed = Replay(rec)
    _use(monkeypatch, "gaia_dr3", resumed, listener)
    rep = fetch.fetch_catalog(part, "gaia_dr3", ra0, dec0, r, tile_nside=512)
    n_tiles = len(fetch.tiles_for_cone(ra0, dec0, r, 512))
    assert rep.skipped == 2 and len(resumed.calls) == n_tiles - 2
    assert _stored_ids(part, "gaia_dr3") == _stored_ids(full, "gaia_dr3")


def test_ps1_quality_cuts_and_colour_terms(tmp_path, monkeypatch, listener):
    rec = Table.read(RESPONSES / "ps1_dr2_mean.ecsv")
    _use(monkeypatch, "ps1_dr2", Replay(rec, "raMean", "decMean"), listener)
    rep = fetch.fetch_catalog(tmp_path, "ps1_dr2", 214.69, 52.895, 0.15)
    assert rep.fetched >= 1
    got = load_region(tmp_path, "ps1_dr2", 214.69, 52.895, 0.15, filter_name="HSC-I",
                      instrument="hsc")
    sep = SkyCoord(rec["raMean"], rec["decMean"], unit="deg").separation(
        SkyCoord(214.69, 52.895, unit="deg")).deg
    inside = np.flatnonzero(sep <= 0.15)
    # rows 0-5 each fail one cut (make_responses.py); every other row passes
    assert set(range(6)) <= set(inside)
    expected = sorted(rec["objID"][i] for i in inside if i >= 6)
    assert sorted(got["id"].tolist()) == expected
    row6 = got[got["id"] == rec["objID"][6]][0]
    assert np.isnan(row6["g_flux"]) and np.isfinite(row6["r_flux"])
    # HSC-I from PS1 i and z through obs_subaru's terms, by hand for one star
    k = np.flatnonzero(got["id"] == rec["objID"][10])[0]
    src = rec[10]
    c = src["iMeanPSFMag"] - src["zMeanPSFMag"]
    m = src["iMeanPSFMag"] + 0.000979 - 0.154608 * c - 0.010429 * c**2
    assert got["flux"][k] == pytest.approx(10 ** (-0.4 * (m - 31.4)), rel=1e-9)
    assert got["epoch"][k] == pytest.approx(56000.0)


def test_sdss_ab_offsets(tmp_path, monkeypatch, listener):
    rec = Table.read(RESPONSES / "sdss_dr16_star.ecsv")
    _use(monkeypatch, "sdss_dr16", Replay(rec), listener)
    fetch.fetch_catalog(tmp_path, "sdss_dr16", 214.69, 52.895, 0.1)
    got = load_region(tmp_path, "sdss_dr16", 214.69, 52.895, 0.1)
    assert len(got) == len(rec)
    got = got[np.argsort(got["id"])]
    rec = rec[np.argsort(rec["objID"])]
    np.testing.assert_allclose(got["u_flux"], 10 ** (-0.4 * (rec["psfMag_u"] - 0.04 - 31.4)),
                               rtol=1e-9)
    np.testing.assert_allclose(got["r_flux"], 10 ** (-0.4 * (rec["psfMag_r"] - 31.4)),
                               rtol=1e-9)
    np.testing.assert_allclose(got["z_flux"], 10 ** (-0.4 * (rec["psfMag_z"] + 0.02 - 31.4)),
                               rtol=1e-9)
    np.testing.assert_allclose(got["ra_err"], 50.0, rtol=1e-9)  # 0.05 arcsec in mas


def test_no_network_fails_at_once(tmp_path, monkeypatch, capsys):
    def never(*a):
        raise AssertionError("no query may run without network")

    _use(monkeypatch, "gaia_dr3", never, _closed_port())
    t0 = time.monotonic()
    status = simple_main("fetchReferenceCatalog", _fetch_body,
                         [str(tmp_path), "--name", "gaia_dr3", "--ra", "10", "--dec", "20",
                          "--radius", "0.2", "--no-progress"])
    assert time.monotonic() - t0 < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert err[0].startswith("fetchReferenceCatalog: error: cannot reach 127.0.0.1")
    assert "ingestReferenceCatalog.py ROOT FILE --name NAME" in err[0]
    assert not (tmp_path / "ref_cats" / "gaia_dr3").exists()


def test_connection_error_during_query(tmp_path, monkeypatch, listener):
    _use(monkeypatch, "ps1_dr2", Replay(Table.read(RESPONSES / "ps1_dr2_mean.ecsv"),
                                        "raMean", "decMean", fail_at=0), listener)
    with pytest.raises(UserError) as exc:
        fetch.fetch_catalog(tmp_path, "ps1_dr2", 214.69, 52.895, 0.1)
    msg = str(exc.value)
    assert "\n" not in msg and "ConnectionError" in msg and "ingestReferenceCatalog.py" in msg


def test_cli_argument_errors(tmp_path, capsys):
    cases = [
        (["--name", "gaia_dr3"], "give --ra, --dec and --radius"),
        (["--name", "2mass", "--ra", "1", "--dec", "2", "--radius", "0.1"], "invalid choice"),
        (["--name", "gaia_dr3", "--id", "tract=0"], "--id tract=N needs --rerun"),
        (["--name", "gaia_dr3", "--ra", "1", "--dec", "95", "--radius", "0.1"],
         "declination within"),
    ]
    for args, text in cases:
        status = simple_main("fetchReferenceCatalog", _fetch_body, [str(tmp_path), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1 and text in err[0], (args, err)


def test_tiles_cover_the_cone_exactly():
    """Tiles = HEALPix pixels holding any point of the cone (dense sampling)."""
    rng = np.random.default_rng(5)
    for ra0, dec0, r in [(0.1, -30.0, 0.4), (359.9, 0.0, 0.25), (120.0, 88.9, 0.5)]:
        tiles = set(fetch.tiles_for_cone(ra0, dec0, r, 128).tolist())
        c = SkyCoord(ra0, dec0, unit="deg")
        pts = c.directional_offset_by(rng.uniform(0, 360, 20000) * u.deg,
                                      r * np.sqrt(rng.uniform(0, 1, 20000)) * u.deg)
        hit = set(ShardScheme(128).pixels_of(pts.ra.rad, pts.dec.rad).tolist())
        assert hit <= tiles
        assert len(tiles - hit) <= 2  # slivers the sampling missed, not far tiles


def test_fetch_a_tract_of_the_skymap(tmp_path, monkeypatch, listener, capsys):
    from tractpatch.refcat.loader import load_polygon
    from tractpatch.repo.repository import Repository
    from tractpatch.skymap import DiscreteSkyMap, DiscreteSkyMapConfig, save_skymap

    repo = Repository(tmp_path, create=True)
    repo.set_rerun("sky")
    sky = DiscreteSkyMap(DiscreteSkyMapConfig(raList=[244.72], decList=[12.0],
                                              radiusList=[0.05]))
    save_skymap(repo, sky, "discrete")
    rec = Table.read(RESPONSES / "gaia_dr3_tap.ecsv")
    _use(monkeypatch, "gaia_dr3", Replay(rec), listener)
    status = simple_main("fetchReferenceCatalog", _fetch_body,
                         [str(tmp_path), "--name", "gaia_dr3", "--id", "tract=0",
                          "--rerun", "sky", "--no-progress"])
    assert status == 0, capsys.readouterr().err
    capsys.readouterr()
    corners = np.asarray(sky[0].corners())
    got = load_polygon(tmp_path, "gaia_dr3", corners[:, 0], corners[:, 1])
    v = SkyCoord(corners[:, 0], corners[:, 1], unit="deg").cartesian.xyz.value.T
    p = SkyCoord(rec["ra"], rec["dec"], unit="deg").cartesian.xyz.value.T
    normals = [np.cross(v[i], v[(i + 1) % len(v)]) for i in range(len(v))]
    sign = np.sign(sum(v.mean(0) @ n for n in normals))  # corner order either way
    inside = np.all([sign * (p @ n) > 0 for n in normals], axis=0)
    assert inside.sum() > 50
    assert sorted(got["id"].tolist()) == sorted(rec["source_id"][inside].tolist())
    status = simple_main("fetchReferenceCatalog", _fetch_body,
                         [str(tmp_path), "--name", "gaia_dr3", "--id", "tract=7",
                          "--rerun", "sky"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "tract=7" in err[0]
