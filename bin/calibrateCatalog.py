#!/usr/bin/env python3
"""Apply jointcal/mosaic (or header) calibrations to SRC catalogs (tractpatch.calibrate.tasks)."""
from tractpatch.calibrate.tasks import main_catalog

if __name__ == "__main__":  # -j starts spawned workers that import this file
    main_catalog()
