#!/usr/bin/env python3
"""findTractPatch.py (see tractpatch.skymap.tasks)."""
from tractpatch.skymap.tasks import find_main

find_main()
