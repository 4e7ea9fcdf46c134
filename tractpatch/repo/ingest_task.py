"""``ingestImages.py ROOT FILES... [--mode link|copy|move|register] [--instrument NAME]``."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..cli.parser import CommandParser
from ..cli.task import simple_main
from ..errors import UserError
from .ingest import MODES, ingest_files
from .instrument import load_instrument
from .repository import Repository

log = logging.getLogger("ingestImages")


def _body(argv) -> int:
    p = CommandParser(prog="ingestImages.py", description="Ingest CCD images into a repository")
    p.add_argument("root", metavar="ROOT")
    p.add_argument("files", nargs="+", metavar="FILES")
    p.add_argument("--mode", default="link", choices=MODES)
    p.add_argument("--instrument", default="generic",
                   help="instrument name (generic, hsc, decam, ps1) or YAML file")
    p.add_argument("--registry", metavar="URL")
    p.add_argument("--doraise", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    instrument = load_instrument(args.instrument)
    missing = [f for f in args.files if not Path(f).exists()]
    if len(missing) == len(args.files):
        raise UserError(f"{missing[0]}: no such file; check the path")
    repo = Repository(args.root, registry_url=args.registry, create=True)
    report = ingest_files(repo, args.files, instrument, args.mode,
                          progress=not args.no_progress)
    if len(report.errors) == 1 and not report.added and not report.already:
        raise UserError(report.errors[0])
    for err in report.errors:
        log.error("%s", err)
    for s in report.skipped:
        log.debug("skipped %s", s)
    if report.skipped:
        log.info("skipped %d companion or non-image files", len(report.skipped))
    if report.already and not report.added:
        log.info("all %d CCDs were already ingested: nothing changed", len(report.already))
    elif report.already:
        log.info("%d CCDs already ingested (unchanged)", len(report.already))
    log.info("ingested %d CCDs into %s", len(report.added), repo.root)
    if report.errors:
        log.error("%d files could not be ingested (see above)", len(report.errors))
        return 2
    return 0


def main(argv=None) -> int:
    """Console-script entry point."""
    sys.exit(simple_main("ingestImages", _body, argv))


if __name__ == "__main__":
    main()
