"""Reference-catalog ingestion: real Gaia DR2 chunks, a real LSST-format SDSS shard, the
simulator's table shape in FITS/CSV/Parquet, units, re-ingest, command-line errors."""
from __future__ import annotations

import glob
import logging

import numpy as np
import pytest
import yaml
from astropy.table import Table, vstack

from tractpatch.errors import UserError
from tractpatch.refcat.ingest import IngestRefCatConfig, ingest_catalog
from tractpatch.refcat.loader import available_refcats, load_region
from tractpatch.refcat.shards import catalog_dir, read_shard, shard_pixels

MAS = np.pi / 180 / 3600e3

GAIA_CONFIG = IngestRefCatConfig(
    id_name="source_id", ra_err_name="ra_error", dec_err_name="dec_error",
    coord_err_unit="mas", pm_ra_name="pmra", pm_dec_name="pmdec",
    pm_ra_err_name="pmra_error", pm_dec_err_name="pmdec_error", parallax_name="parallax",
    epoch_name="ref_epoch", epoch_format="jyear",
    mag_column_list=["phot_g_mean_mag"],
    mag_snr_column_map={"phot_g_mean_mag": "phot_g_mean_flux_over_error"},
    band_name_map={"phot_g_mean_mag": "phot_g_mean"})

SIM_CONFIG = IngestRefCatConfig(
    ra_err_name="ra_err", dec_err_name="dec_err", coord_err_unit="mas",
    pm_ra_name="pmra", pm_dec_name="pmdec", epoch_name="epoch",
    epoch_format="decimalyear", mag_column_list=list("grizy"),
    mag_err_column_map={b: f"{b}_err" for b in "grizy"}, photometric_system="ps1")


@pytest.fixture(autouse=True)
def _fresh_log_handler():
    """Commands run in-process attach a log handler to pytest's captured stderr."""
    def drop():
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, "_tractpatch", False)]:
            root.removeHandler(h)

    drop()
    yield
    drop()


def _gaia_files(shared_data):
    files = sorted(glob.glob(str(shared_data / "legacysurvey-decam-cutouts/*/gaia/*.fits")))
    assert len(files) == 22
    return files


def _read_all(cat):
    d = catalog_dir(cat[0], cat[1])
    return vstack([read_shard(d / f"{p}.fits") for p in shard_pixels(d)])


def test_ingest_gaia_chunks(tmp_path, shared_data):
    files = _gaia_files(shared_data)
    raw = vstack([Table.read(f) for f in files if len(Table.read(f))],
                 metadata_conflicts="silent")
    ids, first = np.unique(np.asarray(raw["source_id"]), return_index=True)
    # testcase6 and testcase7 ship the same two chunks: each star is stored once
    assert len(raw) == 4540 and len(ids) == 3530
    n = ingest_catalog(tmp_path, files, "gaia_dr2", GAIA_CONFIG)
    assert n == 3530
    stored = _read_all((tmp_path, "gaia_dr2"))
    assert len(stored) == 3530 and len(np.unique(stored["id"])) == 3530
    src = raw[first]
    src = src[np.argsort(src["source_id"])]
    stored = stored[np.argsort(stored["id"])]
    assert np.array_equal(np.asarray(stored["id"]), np.asarray(src["source_id"]))
    # radians, errors radians, pm mas/yr, fluxes nJy from AB mags
    np.testing.assert_allclose(stored["coord_ra"], np.radians(src["ra"]), rtol=0, atol=1e-15)
    np.testing.assert_allclose(stored["coord_dec"], np.radians(src["dec"]), rtol=0,
                               atol=1e-15)
    np.testing.assert_allclose(stored["coord_raErr"], src["ra_error"] * MAS, rtol=1e-6)
    has_pm = ~np.ma.getmaskarray(src["pmra"])
    np.testing.assert_allclose(stored["pm_ra"][has_pm], src["pmra"][has_pm], rtol=1e-6)
    assert np.all(stored["pm_flag"] == ~has_pm) and np.all(stored["pm_ra"][~has_pm] == 0)
    g = np.asarray(src["phot_g_mean_mag"], dtype=float)
    np.testing.assert_allclose(stored["phot_g_mean_flux"], 10 ** (-0.4 * (g - 31.4)),
                               rtol=1e-6)
    snr = np.asarray(src["phot_g_mean_flux_over_error"], dtype=float)
    np.testing.assert_allclose(stored["phot_g_mean_fluxErr"],
                               stored["phot_g_mean_flux"] / snr, rtol=1e-6)
    # ref_epoch J2015.5 (TCB) as MJD TAI: 57205.875 minus (TCB-TT 19.06 s + TT-TAI 32.184 s)
    np.testing.assert_allclose(stored["epoch"], 57205.875 - (19.06 + 32.184) / 86400,
                               atol=0.1 / 86400)
    # shards are HEALPix pixels: every star lies in the pixel its file is named after
    info = yaml.safe_load((catalog_dir(tmp_path, "gaia_dr2") / "config.yaml").read_text())
    assert info["shard_scheme"] == {"kind": "healpix", "nside": 64, "order": "nested",
                                    "frame": "icrs", "file": "{pixel}.fits"}
    assert info["n_stars"] == 3530 and info["bands"] == ["phot_g_mean"]
    assert info["ingest_config"]["id_name"] == "source_id"
    from astropy_healpix import HEALPix
    import astropy.units as u

    hp = HEALPix(64, order="nested")
    for p in shard_pixels(catalog_dir(tmp_path, "gaia_dr2")):
        t = read_shard(catalog_dir(tmp_path, "gaia_dr2") / f"{p}.fits")
        assert np.all(hp.lonlat_to_healpix(t["coord_ra"] * u.rad, t["coord_dec"] * u.rad) == p)


def test_ingest_lsst_format_sdss_shard(tmp_path, shared_data):
    path = shared_data / "cfht-d3-ccd12-metadata/refcat_sdss-dr9-fink-v5b_htm7_225822.fits"
    src = Table.read(path)
    n = ingest_catalog(tmp_path, [path], "sdss_dr9")
    assert n == 2628
    stored = _read_all((tmp_path, "sdss_dr9"))
    stored = stored[np.argsort(stored["id"])]
    src = src[np.argsort(src["id"])]
    np.testing.assert_array_equal(stored["coord_ra"], src["coord_ra"])
    np.testing.assert_array_equal(stored["coord_dec"], src["coord_dec"])
    for b in "ugriz":
        np.testing.assert_array_equal(stored[f"{b}_flux"],
                                      np.ma.filled(src[f"{b}_flux"], np.nan))
    # the loader returns degrees; the README's footprint RA 213.94-215.44, Dec 52.42-53.37
    t = load_region(tmp_path, "sdss_dr9", 214.69, 52.895, 1.0)
    assert len(t) == 2628
    assert 213.93 < t["ra"].min() < 213.95 and 215.43 < t["ra"].max() < 215.45
    assert 52.41 < t["dec"].min() < 52.43 and 53.36 < t["dec"].max() < 53.38
    assert available_refcats(tmp_path) == ["sdss_dr9"]


def _sim_table(n=200, seed=3):
    """The simulator's sim/refcat.fits shape."""
    rng = np.random.default_rng(seed)
    t = Table()
    t["ra"] = rng.uniform(149.5, 150.5, n)
    t["dec"] = rng.uniform(1.7, 2.7, n)
    t["ra_err"] = rng.uniform(0.1, 1.0, n)
    t["dec_err"] = rng.uniform(0.1, 1.0, n)
    t["pmra"] = rng.normal(0, 5, n)
    t["pmdec"] = rng.normal(0, 5, n)
    t["epoch"] = np.full(n, 2016.0)
    for k, b in enumerate("grizy"):
        t[b] = rng.uniform(16, 21, n) - 0.1 * k
        t[f"{b}_err"] = rng.uniform(0.005, 0.05, n)
    return t


@pytest.mark.parametrize("fmt", ["fits", "csv", "parquet"])
def test_ingest_sim_shape(tmp_path, fmt):
    t = _sim_table()
    path = tmp_path / f"refcat.{fmt}"
    t.write(path, format={"fits": "fits", "csv": "ascii.csv", "parquet": "parquet"}[fmt])
    assert ingest_catalog(tmp_path / "repo", [path], "sim", SIM_CONFIG) == 200
    out = load_region(tmp_path / "repo", "sim", 150.0, 2.2, 2.0)
    out = out[np.argsort(out["id"])]  # sequential ids follow the input rows
    np.testing.assert_array_equal(out["id"], np.arange(200))
    np.testing.assert_allclose(out["ra"], t["ra"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["dec_err"], t["dec_err"], rtol=1e-12)
    np.testing.assert_allclose(out["pm_ra"], t["pmra"], rtol=1e-12)
    np.testing.assert_allclose(out["r_flux"], 10 ** (-0.4 * (t["r"] - 31.4)), rtol=1e-12)
    np.testing.assert_allclose(out["r_fluxErr"], out["r_flux"] * t["r_err"] * np.log(10) / 2.5,
                               rtol=1e-12)
    # 2016.0 decimal year = 2016-01-01T00:00 TCB = MJD 57388 minus 51.24 s to TAI
    np.testing.assert_allclose(out["epoch"], 57388.0 - (19.06 + 32.184) / 86400,
                               atol=0.1 / 86400)
    info = yaml.safe_load((catalog_dir(tmp_path / "repo", "sim") / "config.yaml").read_text())
    assert info["photometric_system"] == "ps1" and info["bands"] == list("grizy")


def test_reingest_refused_then_overwritten(tmp_path):
    t = _sim_table(20)
    t.write(tmp_path / "a.fits")
    ingest_catalog(tmp_path, [tmp_path / "a.fits"], "sim", SIM_CONFIG)
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        ingest_catalog(tmp_path, [tmp_path / "a.fits"], "sim", SIM_CONFIG)
    t[:5].write(tmp_path / "b.fits")
    assert ingest_catalog(tmp_path, [tmp_path / "b.fits"], "sim", SIM_CONFIG,
                          overwrite=True) == 5
    assert len(load_region(tmp_path, "sim", 150.0, 2.2, 2.0)) == 5
    assert [p.name for p in (tmp_path / "ref_cats").iterdir()] == ["sim"]  # no leftovers


def test_cli_ingest_and_errors(tmp_path, run, capsys):
    t = _sim_table(30)
    t.write(tmp_path / "sim.fits")
    cfg = tmp_path / "sim.yaml"
    cfg.write_text(yaml.safe_dump(SIM_CONFIG.model_dump()))
    repo = tmp_path / "repo"
    p = run("ingestReferenceCatalog.py", repo, tmp_path / "sim.fits", "--name", "sim",
            "--configfile", cfg, check=0)
    assert "ingested 30 stars" in p.stdout
    # missing column: one line naming the column and the config key, exit 2
    p = run("ingestReferenceCatalog.py", repo, tmp_path / "sim.fits", "--name", "x",
            "--config", "ra_name=RAJ2000", check=2)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "'RAJ2000'" in lines[0] and "ra_name" in lines[0]
    assert lines[0].startswith("ingestReferenceCatalog: error: ")
    # the other errors through the same entry point, in-process (faster)
    from tractpatch.cli.task import simple_main
    from tractpatch.refcat.tasks import _ingest_body

    sim = str(tmp_path / "sim.fits")
    cases = [
        ([sim, "--name", "x", "--config", "mag_column_list=[g,r]",
          "mag_err_column_map={g: gerr}"], ["'gerr'", "mag_err_column_map"]),
        ([sim, "--name", "x", "--config", "pm_ra_name=pmra", "pm_dec_name=pmdec"],
         ["epoch_name"]),
        ([sim, "--name", "sim", "--configfile", str(cfg)], ["already exists", "--overwrite"]),
        ([str(tmp_path / "nope.fits"), "--name", "y"], ["nope.fits: no such file"]),
        ([sim, "--name", "y", "--config", "shard_nside=100"], ["shard_nside", "power of 2"]),
        ([sim, "--name", "y", "--config", "coord_err_unit=furlong"], ["coord_err_unit"]),
        ([sim, "--name", "y", "--config", "epoch_name=epoch", "epoch_format=iso"],
         ["epoch_format"]),
    ]
    for args, texts in cases:
        status = simple_main("ingestReferenceCatalog", _ingest_body, [str(repo), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1, (args, err)
        assert all(x in err[0] for x in texts), (args, err)
    assert available_refcats(repo) == ["sim"]
