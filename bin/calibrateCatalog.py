#!/usr/bin/env python3
"""Apply jointcal/mosaic (or header) calibrations to SRC catalogs (tractpatch.calibrate.tasks)."""
from tractpatch.calibrate.tasks import main_catalog

main_catalog()
