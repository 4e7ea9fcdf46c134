#!/usr/bin/env python3
"""Ingest a FITS/CSV/Parquet table as a reference catalog (see tractpatch.refcat.tasks)."""
from tractpatch.refcat.tasks import ingest_main

ingest_main()
