#!/usr/bin/env python3
"""Warp CALEXPs onto patches and stack them into deep coadds (see tractpatch.coadd.task)."""
from tractpatch.coadd.task import main

if __name__ == "__main__":  # -j workers are spawned and import this file
    main()
