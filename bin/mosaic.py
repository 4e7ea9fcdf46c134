#!/usr/bin/env python3
"""meas_mosaic-style calibration of a tract (tractpatch.jointcal.mosaic_task)."""
from tractpatch.jointcal.mosaic_task import main

if __name__ == "__main__":
    main()
