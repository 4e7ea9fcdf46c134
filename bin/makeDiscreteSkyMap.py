#!/usr/bin/env python3
"""makeDiscreteSkyMap.py (see tractpatch.skymap.tasks)."""
from tractpatch.skymap.tasks import make_discrete_main

make_discrete_main()
