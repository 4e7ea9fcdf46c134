"""``makeReport.py ROOT --rerun R``: the HTML report a user opens first."""
from __future__ import annotations

import logging
import sys

from ..cli.parser import make_parser
from ..cli.task import simple_main
from ..repo.repository import Repository
from .report import make_report

log = logging.getLogger("makeReport")


def _body(argv) -> int:
    p = make_parser("makeReport.py", "Write the HTML report of a rerun", uses_ids=False)
    args = p.parse_args(argv)
    repo = Repository(args.root, registry_url=args.registry)
    repo.set_rerun(args.rerun)
    path = make_report(repo)
    log.info("report written to %s", path)
    print(path)
    return 0


def main(argv=None) -> None:
    """Console-script entry point."""
    sys.exit(simple_main("makeReport", _body, argv))


if __name__ == "__main__":
    main()
