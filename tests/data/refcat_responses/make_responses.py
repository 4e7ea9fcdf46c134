"""Build the archive answers the fetch tests replay (run once; outputs are committed).

No network: the answers are made from the real data in ../shared/data, laid out as each
service returns them.

- gaia_dr3_tap.ecsv: the Gaia DR2 stars of legacysurvey-decam-cutouts/testcase3 (4
  chunks, RA 244.59-244.86, Dec 11.87-12.13) with the columns of our ADQL
  (tractpatch.refcat.fetch.gaia_adql), as the Gaia TAP service returns them.
- ps1_dr2_mean.ecsv: MAST PS1 DR2 MeanObjectView columns (fetch.PS1_COLUMNS) for the
  SDSS DR9 stars of cfht-d3-ccd12-metadata within 0.15 deg of (214.69, 52.895):
  positions from the shard, g r i z from its fluxes, y = z - 0.1, errors 0.02 mag,
  nDetections 5, objInfoFlag GOOD; rows 0-5 are altered to fail one quality cut each
  (see test_refcat_fetch.py) and row 6 has g = -999 (kept, g unknown).
- sdss_dr16_star.ecsv: SkyServer Star columns (fetch.sdss_sql) for the same stars
  within 0.1 deg, psfMag_<b> from the shard's fluxes minus the AB offsets.
"""
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

HERE = Path(__file__).parent
SHARED = HERE.parents[2].parent / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")


def gaia():
    files = sorted((SHARED / "legacysurvey-decam-cutouts/testcase3/gaia").glob("*.fits"))
    t = vstack([Table.read(f) for f in files], metadata_conflicts="silent")
    cols = [c.strip() for c in (
        "source_id, ra, dec, ra_error, dec_error, pmra, pmra_error, pmdec, pmdec_error, "
        "parallax, parallax_error, ref_epoch, phot_g_mean_mag, phot_g_mean_flux_over_error, "
        "phot_bp_mean_mag, phot_bp_mean_flux_over_error, phot_rp_mean_mag, "
        "phot_rp_mean_flux_over_error").split(",")]
    t = t[cols]
    t.meta = {}
    t.write(HERE / "gaia_dr3_tap.ecsv", overwrite=True)


def _sdss_near(radius):
    t = Table.read(SHARED / "cfht-d3-ccd12-metadata/refcat_sdss-dr9-fink-v5b_htm7_225822.fits")
    ra = np.degrees(np.asarray(t["coord_ra"], float))
    dec = np.degrees(np.asarray(t["coord_dec"], float))
    from astropy.coordinates import SkyCoord

    sep = SkyCoord(ra, dec, unit="deg").separation(SkyCoord(214.69, 52.895, unit="deg")).deg
    keep = (sep < radius) & np.all([np.isfinite(np.ma.filled(t[f"{b}_flux"], np.nan))
                                    & (np.ma.filled(t[f"{b}_flux"], -1) > 0)
                                    for b in "ugriz"], axis=0)
    t = t[keep]
    mags = {b: -2.5 * np.log10(np.asarray(t[f"{b}_flux"], float)) + 31.4 for b in "ugriz"}
    return t, np.asarray(ra[keep]), np.asarray(dec[keep]), mags


def ps1():
    t, ra, dec, mags = _sdss_near(0.15)
    n = len(t)
    out = Table()
    out["objID"] = np.asarray(t["id"], dtype=np.int64) + 100000000000000000
    out["raMean"], out["decMean"] = ra, dec
    out["raMeanErr"] = np.full(n, 0.02)
    out["decMeanErr"] = np.full(n, 0.02)
    out["epochMean"] = np.full(n, 56000.0)
    out["nDetections"] = np.full(n, 5, dtype=np.int16)
    out["qualityFlag"] = np.full(n, 52, dtype=np.int16)
    out["objInfoFlag"] = np.full(n, 33554432 | 8388608, dtype=np.int64)
    out["iMeanKronMag"] = mags["i"] + 0.01
    for b in "grizy":
        m = mags[b] if b != "y" else mags["z"] - 0.1
        out[f"{b}MeanPSFMag"] = m
        out[f"{b}MeanPSFMagErr"] = np.full(n, 0.02)
    out["nDetections"][0] = 1                      # single detection
    out["objInfoFlag"][1] = 8388608                # GOOD not set
    out["objInfoFlag"][2] |= 524288                # no mean astrometry
    out["raMeanErr"][3] = 1.5                      # > 1 arcsec
    for b in "grizy":                              # no magnitude at all
        out[f"{b}MeanPSFMag"][4] = -999.0
        out[f"{b}MeanPSFMagErr"][4] = -999.0
    out["iMeanKronMag"][5] = out["iMeanPSFMag"][5] - 0.3   # extended
    out["gMeanPSFMag"][6] = -999.0                 # g unknown, kept
    out["gMeanPSFMagErr"][6] = -999.0
    out.write(HERE / "ps1_dr2_mean.ecsv", overwrite=True)


def sdss():
    t, ra, dec, mags = _sdss_near(0.1)
    out = Table()
    out["objID"] = np.asarray(t["id"], dtype=np.int64)
    out["ra"], out["dec"] = ra, dec
    out["raErr"] = np.full(len(t), 0.05)
    out["decErr"] = np.full(len(t), 0.05)
    out["mjd"] = np.full(len(t), 53000, dtype=np.int32)
    offsets = {"u": -0.04, "z": 0.02}
    for b in "ugriz":
        out[f"psfMag_{b}"] = mags[b] - offsets.get(b, 0.0)
        out[f"psfMagErr_{b}"] = np.full(len(t), 0.03)
    out.write(HERE / "sdss_dr16_star.ecsv", overwrite=True)


if __name__ == "__main__":
    gaia()
    ps1()
    sdss()
