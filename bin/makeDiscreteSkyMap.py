#!/usr/bin/env python3
"""makeDiscreteSkyMap.py (see tractpatch.skymap.tasks)."""
from tractpatch.skymap.tasks import make_discrete_main

if __name__ == "__main__":  # -j workers are spawned and import this file
    make_discrete_main()
