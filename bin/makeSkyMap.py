#!/usr/bin/env python3
"""makeSkyMap.py (see tractpatch.skymap.tasks)."""
from tractpatch.skymap.tasks import make_skymap_main

if __name__ == "__main__":  # -j workers are spawned and import this file
    make_skymap_main()
