#!/usr/bin/env python3
"""Fetch Gaia/PS1/SDSS stars into a reference catalog (see tractpatch.refcat.tasks)."""
from tractpatch.refcat.tasks import fetch_main

fetch_main()
