#!/usr/bin/env python3
"""makeSkyMap.py (see tractpatch.skymap.tasks)."""
from tractpatch.skymap.tasks import make_skymap_main

make_skymap_main()
