#!/usr/bin/env python3
"""Detect and measure sources on each CCD (see tractpatch.sources.task)."""
from tractpatch.sources.task import main

if __name__ == "__main__":  # -j workers are spawned and import this file
    main()
