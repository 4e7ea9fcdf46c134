"""Command-line entry points: ``ingestReferenceCatalog.py`` and ``fetchReferenceCatalog.py``.

``ingestReferenceCatalog.py ROOT FILE... --name NAME [--config K=V...] [--configfile F]
[--overwrite] [--show config]``

``fetchReferenceCatalog.py ROOT --name gaia_dr3|ps1_dr2|sdss_dr16
(--ra RA --dec DEC --radius R | --id tract=N --rerun R) [--timeout S]``
"""
from __future__ import annotations

import logging
import sys

import numpy as np

from ..cli.parser import CommandParser
from ..cli.task import simple_main
from ..errors import UserError
from .config import IngestRefCatConfig

log = logging.getLogger("ingestReferenceCatalog")


def _ingest_body(argv) -> int:
    from .ingest import ingest_catalog

    p = CommandParser(prog="ingestReferenceCatalog.py",
                description="Ingest FITS/CSV/Parquet tables as a HEALPix-sharded "
                "reference catalog under ROOT/ref_cats/NAME")
    p.add_argument("root", metavar="ROOT")
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--name", required=True, help="catalog name (ref_cats/NAME)")
    p.add_argument("--config", "-c", nargs="+", action="extend", default=[],
                   metavar="NAME=VALUE", help="column mapping, e.g. ra_name=RAJ2000 "
                   "mag_column_list=[g,r] mag_err_column_map={g:g_err,r:r_err}")
    p.add_argument("--configfile", "-C", nargs="+", action="extend", default=[],
                   metavar="FILE", help="YAML configuration files")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing catalog of that name")
    p.add_argument("--show", choices=["config"], help="print the configuration and exit")
    p.add_argument("--doraise", action="store_true")
    args = p.parse_args(argv)
    config = IngestRefCatConfig().with_overrides(args.config, args.configfile)
    if args.show == "config":
        print(config.to_yaml(), end="")
        return 0
    if not args.files:
        raise UserError("give at least one FILE to ingest (see ingestReferenceCatalog.py "
                        "--help)")
    n = ingest_catalog(args.root, args.files, args.name, config, overwrite=args.overwrite)
    print(f"ingested {n} stars into {args.root}/ref_cats/{args.name}")
    return 0


def ingest_main(argv=None) -> int:
    """Console-script entry of ingestReferenceCatalog.py."""
    sys.exit(simple_main("ingestReferenceCatalog", _ingest_body, argv))


def _fetch_body(argv) -> int:
    from .fetch import SERVICES, fetch_catalog

    p = CommandParser(prog="fetchReferenceCatalog.py",
                description="Fetch Gaia DR3, PS1 DR2 or SDSS DR16 stars of a sky area "
                "into ROOT/ref_cats/NAME (resumable)")
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--name", required=True, choices=list(SERVICES))
    p.add_argument("--ra", type=float, help="cone centre RA (deg)")
    p.add_argument("--dec", type=float, help="cone centre Dec (deg)")
    p.add_argument("--radius", type=float, help="cone radius (deg)")
    p.add_argument("--id", nargs="+", action="append", metavar="tract=N",
                   help="the area of a tract of the skymap (needs --rerun)")
    p.add_argument("--rerun", metavar="[IN:]OUT", help="rerun holding the skymap")
    p.add_argument("--margin", type=float, default=0.05,
                   help="extra radius around a tract (deg, default 0.05)")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for the service to answer a connection")
    p.add_argument("--shard-nside", type=int, default=64, help="HEALPix nside of shards")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--doraise", action="store_true")
    args = p.parse_args(argv)
    cones = []
    if args.id:
        if any(v is not None for v in (args.ra, args.dec, args.radius)):
            raise UserError("give either --id tract=N or --ra/--dec/--radius, not both")
        cones = _tract_cones(args.root, args.rerun, args.id, args.margin)
    elif None in (args.ra, args.dec, args.radius):
        raise UserError("give --ra, --dec and --radius (degrees) or --id tract=N")
    else:
        cones = [(args.ra, args.dec, args.radius)]
    for ra, dec, radius in cones:
        rep = fetch_catalog(args.root, args.name, ra, dec, radius, timeout=args.timeout,
                            shard_nside=args.shard_nside, progress=not args.no_progress)
        print(f"{args.name}: {rep.fetched} tiles fetched ({rep.stars_added} stars), "
              f"{rep.skipped} already present; {rep.n_stars} stars in "
              f"{args.root}/ref_cats/{args.name}")
    return 0


def _tract_cones(root, rerun, id_args, margin) -> list[tuple[float, float, float]]:
    """A cone (centre, radius) around each requested tract of the skymap."""
    from ..repo.dataid import parse_id_args
    from ..repo.repository import Repository
    from .loader import angular_separation

    if not rerun:
        raise UserError("--id tract=N needs --rerun naming the rerun with the skymap "
                        "(makeSkyMap.py / makeDiscreteSkyMap.py)")
    try:
        from ..skymap import load_skymap
    except ImportError:
        raise UserError("--id tract=N needs the skymap module; use --ra --dec --radius"
                        ) from None
    repo = Repository(root)
    repo.set_rerun(rerun)
    skymap = load_skymap(repo)
    cones = []
    for tokens in id_args:
        spec = parse_id_args(tokens)
        tracts = _tract_values(spec)
        if not tracts:
            raise UserError(f"--id {' '.join(tokens)}: give tract=N (e.g. tract=0 or "
                            "tract=0^1)")
        for tract_id in tracts:
            try:
                tract = skymap[int(tract_id)]
            except (KeyError, IndexError) as exc:
                raise UserError(f"--id tract={tract_id}: {str(exc).strip(chr(39))} of "
                                f"rerun {rerun}; pick a tract of the skymap") from None
            ra0, dec0 = tract.center
            corners = np.asarray(tract.corners(), dtype=float).reshape(-1, 2)
            r = float(angular_separation(ra0, dec0, corners[:, 0], corners[:, 1]).max())
            cones.append((ra0, dec0, r + margin))
    return cones


def _tract_values(spec) -> list:
    """Tract numbers of a parsed ``--id`` (a DataIdSpec)."""
    return list(spec.terms.get("tract", []))


def fetch_main(argv=None) -> int:
    """Console-script entry of fetchReferenceCatalog.py."""
    sys.exit(simple_main("fetchReferenceCatalog", _fetch_body, argv))
