#!/usr/bin/env python3
"""Write the HTML report of a rerun (see tractpatch.diagnostics.report_task)."""
from tractpatch.diagnostics.report_task import main

main()
