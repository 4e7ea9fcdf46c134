"""``mosaic.py ROOT --rerun R --id visit=... tract=T ccd=... [--diagnostics --diagDir DIR]``.

meas_mosaic's algorithm (:mod:`.mosaic_solver`) as an alternative to jointcal.py, with
the same inputs, units (one fit per tract and filter), reading (``-j N`` reads the SRC
catalogs in N processes) and output formats, written under ``mosaic-results/<tract>/``
(``mosaic_wcs-*``, ``mosaic_photoCalib-*``, ``mosaic_metrics-<filter>.yaml``), so that
running both solvers leaves both result sets; calibrateExposure.py chooses between
them with ``--config calibSource=jointcal|mosaic``.
"""
from __future__ import annotations

import sys

from .config import MosaicConfig
from .mosaic_solver import fit_mosaic
from .task import JointFitTask


class MosaicTask(JointFitTask):
    """meas_mosaic-style calibration of a tract, per filter."""

    name = "mosaic"
    description = ("meas_mosaic-style astrometric and photometric calibration of all CCDs "
                   "of a tract (per-visit focal-plane polynomials, rigid CCDs)")
    ConfigClass = MosaicConfig

    def fit(self, det, images, refcat):
        return fit_mosaic(det, images, refcat, self.config)


def main():
    """Console entry point of mosaic.py."""
    sys.exit(MosaicTask.main())
