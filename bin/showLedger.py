#!/usr/bin/env python3
"""List pending, running, faulted and flagged units of a rerun (see tractpatch.cli.ledger_view)."""
from tractpatch.cli.ledger_view import main

main()
