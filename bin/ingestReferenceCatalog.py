#!/usr/bin/env python3
"""Ingest a FITS/CSV/Parquet table as a reference catalog (see tractpatch.refcat.tasks)."""
from tractpatch.refcat.tasks import ingest_main

if __name__ == "__main__":  # -j workers are spawned and import this file
    ingest_main()
