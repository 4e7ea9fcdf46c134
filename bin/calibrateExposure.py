#!/usr/bin/env python3
"""Apply jointcal/mosaic (or header) calibrations to CCDs (see tractpatch.calibrate.tasks)."""
from tractpatch.calibrate.tasks import main_exposure

main_exposure()
