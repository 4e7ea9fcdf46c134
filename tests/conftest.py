"""Shared test fixtures: where the real test data lives, and a small helper to run commands."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    candidates = [os.environ.get("TRACTPATCH_SHARED"), REPO.parent / "shared" / "data",
                  Path("/work/shared/data")]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    raise RuntimeError("shared test data not found: set TRACTPATCH_SHARED to shared/data")


SHARED = _shared_data()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real survey data, read-only)."""
    return SHARED


def run_cmd(script: str, *args, check=None, env=None):
    """Run ``bin/<script>`` with the test interpreter; returns CompletedProcess."""
    cmd = [sys.executable, str(REPO / "bin" / script), *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture
def run():
    """The :func:`run_cmd` helper."""
    return run_cmd


def tan_header(ra=10.0, dec=20.0, crpix=(50, 50), cdelt_deg=5e-5, **cards):
    """A FITS header with a plain TAN WCS (east left) plus ``cards``, for test images."""
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = list(crpix)
    w.wcs.cdelt = [-cdelt_deg, cdelt_deg]
    h = w.to_header()
    for k, v in cards.items():
        h[k] = v
    return h


def make_catalog_survey(root, visits: int):
    """A catalog-only simulated survey for the solvers' tests: 6 HSC-size CCDs x
    ``visits`` visits in HSC-I with HSC-like distortion (10" at 0.75 deg)."""
    from tractpatch.sim.config import preset_config
    from tractpatch.sim.survey import make_demo_repo

    cfg = preset_config("tiny", overrides=[
        "catalog_n_ccds=6", f"catalog_visits_per_field={visits}", "filters=[HSC-I]",
        "star_density=20000", "galaxy_density=20000", "distortion_arcsec=10.0",
        "distortion_radius_deg=0.75"])
    make_demo_repo(root, preset="tiny", config=cfg, catalog_only=True)
    return root
