"""Making a simulated survey and its demo repository (``makeDemoRepo.py``).

``make_demo_repo(root, preset, seed)`` writes ``ROOT/sim/`` (``exposures/``,
``refcat.fits``, ``truth/``) and ingests the exposures (instrument ``hsc``) and the
reference catalog (as ``ref_cats/sim/``) into the repository ROOT.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from astropy.io import fits

from ..atomic import write_fits_atomic
from ..cli.task import provenance
from ..errors import UserError
from .config import SimConfig, preset_config
from .observing import build_truth, seeded
from .sky import make_refcat
from .truth import SimTruth

log = logging.getLogger("makeDemoRepo")

REFCAT_NAME = "sim"


@dataclass
class DemoRepo:
    """What :func:`make_demo_repo` made."""

    root: Path
    sim_dir: Path
    truth: SimTruth
    config: SimConfig
    exposures: list[Path] = field(default_factory=list)
    catalogs: list[Path] = field(default_factory=list)
    refcat_path: Path | None = None
    n_refcat: int = 0
    n_ingested: int = 0
    seconds: float = 0.0


def exposure_path(sim_dir: Path, visit: dict, ccd: int) -> Path:
    """``sim/exposures/<field>/<filter>/SIM-<visit>-<ccd>.fits``."""
    return (Path(sim_dir) / "exposures" / visit["field"] / visit["filter"]
            / f"SIM-{visit['visit']:07d}-{ccd:03d}.fits")


def write_refcat(path: Path, truth: SimTruth, config: SimConfig, seed: int) -> int:
    """Write the reference catalog file; returns the number of stars."""
    ref = make_refcat(truth.objects, config.refcat_mag_limit, seeded(seed, 4))
    hdu = fits.BinTableHDU(ref, name="REFCAT")
    hdu.header["EPOCH"] = (2016.0, "Julian epoch of the positions")
    write_fits_atomic(path, fits.HDUList([fits.PrimaryHDU(), hdu]))
    return len(ref)


def render_all(truth: SimTruth, config: SimConfig, sim_dir: Path, seed: int,
               progress: bool = False) -> list[Path]:
    """Render and write every CCD of every visit, one CCD in memory at a time."""
    from tqdm import tqdm

    from ..image import write_exposure
    from .render import render_ccd

    prov = provenance("makeDemoRepo", config)
    prov.update(SIMSEED=int(seed), SIMPRSET=truth.preset or "custom")
    units = [(v, c) for v in truth.visits for c in truth.ccds]
    paths = []
    for v, c in tqdm(units, desc="render", unit="ccd", disable=None if progress else True,
                     leave=False):
        exp = render_ccd(truth, v, c, config, seed)
        p = exposure_path(sim_dir, truth.visit(v), c)
        write_exposure(p, exp, extra_header=prov)
        paths.append(p)
    return paths


def ingest_exposures(root: Path, paths: list[Path]) -> int:
    """Ingest the simulated exposures (symbolic links) with the ``hsc`` instrument."""
    from ..repo.ingest import ingest_files
    from ..repo.instrument import load_instrument
    from ..repo.repository import Repository

    repo = Repository(root, create=True)
    report = ingest_files(repo, paths, load_instrument("hsc"), mode="link", progress=False)
    if getattr(report, "errors", None):
        raise UserError(f"{root}: {len(report.errors)} simulated exposures could not be "
                        f"ingested, first: {report.errors[0]}")
    return len(report.added) + len(report.already)


def ingest_refcat(root: Path, path: Path) -> int:
    """Ingest ``refcat.fits`` as ``ref_cats/sim`` with the refcat package's ingest."""
    from ..refcat.ingest import IngestRefCatConfig, ingest_catalog

    cfg = IngestRefCatConfig(
        ra_name="ra", dec_name="dec", ra_err_name="ra_err", dec_err_name="dec_err",
        coord_err_unit="mas", mag_column_list=["g", "r", "i", "z", "y"],
        mag_err_column_map={b: f"{b}_err" for b in "grizy"}, pm_ra_name="pmra",
        pm_dec_name="pmdec", pm_ra_err_name="pmra_err", pm_dec_err_name="pmdec_err",
        epoch_name="epoch", epoch_format="jyear",
        # PS1-like photometry: the instrument's PS1 colour terms apply
        photometric_system="ps1")
    # the simulator owns ref_cats/sim: regenerating the same survey replaces it
    return int(ingest_catalog(root, [path], REFCAT_NAME, cfg, overwrite=True))


def check_same_simulation(sim_dir: Path, truth: SimTruth) -> None:
    """Refuse to overwrite a different simulation: the registry would keep its rows."""
    import yaml

    model = Path(sim_dir) / "truth" / "model.yaml"
    if not model.exists():
        return
    old = yaml.safe_load(model.read_text()) or {}
    if old != yaml.safe_load(yaml.safe_dump(truth.to_dict(), sort_keys=False)):
        raise UserError(f"{model.parent.parent.parent}: already holds another simulation "
                        f"(preset {old.get('preset')!r}, seed {old.get('seed')}); use a "
                        "new ROOT (the same preset, seed and config regenerate it)")


def make_demo_repo(root, preset: str = "tiny", seed: int = 1, ingest: bool = True,
                   config: SimConfig | None = None, catalog_only: bool = False,
                   rerun: str = "sim", progress: bool = False) -> DemoRepo:
    """Simulate a survey into ``ROOT/sim`` and (by default) ingest it into ROOT.

    Parameters
    ----------
    root : str or Path
        Repository root (created if needed).
    preset : {"tiny", "mini", "hsc"}
        Size of the survey (see :data:`tractpatch.sim.config.PRESETS`).
    seed : int
        Everything drawn is a function of the seed.
    ingest : bool
        Ingest exposures and reference catalog (False: only write the files).
    config : SimConfig, optional
        Full configuration (default: the preset's).
    catalog_only : bool
        Write SRC catalogs from the truth (full 104-CCD camera) instead of pixels.
    rerun : str
        Rerun of the catalog-only SRC catalogs.
    progress : bool
        Show progress bars.

    Returns
    -------
    DemoRepo
    """
    t0 = time.perf_counter()
    config = config or preset_config(preset)
    root = Path(root).resolve()
    sim_dir = root / "sim"
    truth = build_truth(config, seed, preset, catalog_only=catalog_only)
    check_same_simulation(sim_dir, truth)
    truth.write(sim_dir / "truth")
    out = DemoRepo(root=root, sim_dir=sim_dir, truth=truth, config=config)
    out.refcat_path = sim_dir / "refcat.fits"
    out.n_refcat = write_refcat(out.refcat_path, truth, config, seed)
    log.info("truth: %d visits x %d CCDs, %d objects (%d stars); refcat %d stars",
             len(truth.visits), len(truth.ccds), len(truth.objects),
             int((truth.objects["type"] == "star").sum()), out.n_refcat)
    if catalog_only:
        from .catalog import write_catalogs

        out.catalogs = write_catalogs(root, truth, config, seed, rerun, progress)
        out.n_ingested = len(out.catalogs)
    else:
        out.exposures = render_all(truth, config, sim_dir, seed, progress)
        if ingest:
            out.n_ingested = ingest_exposures(root, out.exposures)
    if ingest:
        ingest_refcat(root, out.refcat_path)
    out.seconds = time.perf_counter() - t0
    return out
