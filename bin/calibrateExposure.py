#!/usr/bin/env python3
"""Apply jointcal/mosaic (or header) calibrations to CCDs (see tractpatch.calibrate.tasks)."""
from tractpatch.calibrate.tasks import main_exposure

if __name__ == "__main__":  # -j starts spawned workers that import this file
    main_exposure()
