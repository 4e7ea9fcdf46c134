"""The survey simulator: HSC-like exposures with known truth (docs/simulator.md).

- :func:`make_demo_repo` — simulate a preset survey into ``ROOT/sim`` and ingest it;
- :func:`load_truth` — the true pixel→sky maps, calibrations and objects;
- :class:`SimConfig`, :func:`preset_config` — the configuration and presets.
"""
from .config import PRESETS, SimConfig, preset_config
from .survey import DemoRepo, make_demo_repo
from .truth import SimTruth, load_truth

__all__ = ["make_demo_repo", "DemoRepo", "load_truth", "SimTruth", "SimConfig",
           "preset_config", "PRESETS"]
