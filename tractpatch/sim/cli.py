"""``makeDemoRepo.py ROOT [--preset tiny|mini|hsc] [--seed N] [--config NAME=VALUE...]
[--configfile FILE] [--no-ingest] [--catalog-only] [--rerun NAME] [--show config]``."""
from __future__ import annotations

import logging
import sys

from ..cli.parser import CommandParser
from ..cli.task import simple_main
from .config import PRESETS, preset_config

log = logging.getLogger("makeDemoRepo")


def _body(argv) -> int:
    p = CommandParser(prog="makeDemoRepo.py",
                description="Simulate an HSC-like survey with known truth into ROOT/sim "
                "and ingest it into the repository ROOT")
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--preset", default="mini", choices=list(PRESETS),
                   help="survey size (default mini; tests use tiny)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--config", "-c", nargs="+", action="extend", default=[],
                   metavar="NAME=VALUE", help="configuration overrides")
    p.add_argument("--configfile", "-C", nargs="+", action="extend", default=[],
                   metavar="FILE", help="YAML configuration override files")
    p.add_argument("--no-ingest", action="store_true",
                   help="only write ROOT/sim; do not ingest")
    p.add_argument("--catalog-only", action="store_true",
                   help="write SRC catalogs from the truth for the full 104-CCD camera "
                   "(no pixels)")
    p.add_argument("--rerun", default="sim", help="rerun of the catalog-only SRC "
                   "catalogs (default sim)")
    p.add_argument("--show", choices=["config"], help="print the configuration and exit")
    p.add_argument("--doraise", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    config = preset_config(args.preset, args.config, args.configfile)
    if args.show == "config":
        print(config.to_yaml(), end="")
        return 0
    from .survey import make_demo_repo

    out = make_demo_repo(args.root, args.preset, args.seed, ingest=not args.no_ingest,
                         config=config, catalog_only=args.catalog_only, rerun=args.rerun,
                         progress=not args.no_progress)
    what = (f"{len(out.catalogs)} SRC catalogs (rerun {args.rerun})" if args.catalog_only
            else f"{len(out.exposures)} exposures")
    log.info("wrote %s, refcat (%d stars) and truth under %s in %.1f s", what,
             out.n_refcat, out.sim_dir, out.seconds)
    return 0


def main(argv=None) -> int:
    """Console-script entry point."""
    sys.exit(simple_main("makeDemoRepo", _body, argv))


if __name__ == "__main__":
    main()
