#!/usr/bin/env python3
"""cutout.py (see tractpatch.coadd.cutout)."""
from tractpatch.coadd.cutout import main

if __name__ == "__main__":  # -j workers are spawned and import this file
    main()
