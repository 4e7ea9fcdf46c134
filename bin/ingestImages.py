#!/usr/bin/env python3
"""Ingest CCD images into a tractpatch repository (see tractpatch.repo.ingest_task)."""
from tractpatch.repo.ingest_task import main

if __name__ == "__main__":  # -j workers are spawned and import this file
    main()
