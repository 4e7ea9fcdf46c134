#!/usr/bin/env python3
"""Write the HTML report of a rerun (see tractpatch.diagnostics.report_task)."""
from tractpatch.diagnostics.report_task import main

if __name__ == "__main__":  # -j workers are spawned and import this file
    main()
