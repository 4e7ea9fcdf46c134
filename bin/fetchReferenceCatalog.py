#!/usr/bin/env python3
"""Fetch Gaia/PS1/SDSS stars into a reference catalog (see tractpatch.refcat.tasks)."""
from tractpatch.refcat.tasks import fetch_main

if __name__ == "__main__":  # -j workers are spawned and import this file
    fetch_main()
