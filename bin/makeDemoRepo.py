#!/usr/bin/env python3
"""Simulate an HSC-like survey with known truth and ingest it (see tractpatch.sim)."""
from tractpatch.sim.cli import main

if __name__ == "__main__":  # -j workers are spawned and import this file
    main()
