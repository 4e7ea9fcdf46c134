#!/usr/bin/env python3
"""Joint astrometric and photometric calibration of a tract (tractpatch.jointcal.task)."""
from tractpatch.jointcal.task import main

if __name__ == "__main__":
    main()
