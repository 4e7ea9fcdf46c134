#!/usr/bin/env python3
"""Ingest CCD images into a tractpatch repository (see tractpatch.repo.ingest_task)."""
from tractpatch.repo.ingest_task import main

main()
