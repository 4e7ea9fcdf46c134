#!/usr/bin/env python3
"""makeColorImage.py (see tractpatch.coadd.color)."""
from tractpatch.coadd.color import main

if __name__ == "__main__":  # -j workers are spawned and import this file
    main()
