#!/usr/bin/env python3
"""findTractPatch.py (see tractpatch.skymap.tasks)."""
from tractpatch.skymap.tasks import find_main

if __name__ == "__main__":  # -j workers are spawned and import this file
    find_main()
