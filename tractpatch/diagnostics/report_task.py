"""``makeReport.py ROOT --rerun R``: the HTML report a user opens first.

When the repository holds a simulated survey (``ROOT/sim/truth``), the rerun is first
scored against the truth (``report/accuracy.yaml``) and the scores lead the report.
"""
from __future__ import annotations

import logging
import sys

import yaml

from ..atomic import write_text_atomic
from ..cli.parser import make_parser
from ..cli.task import simple_main
from ..repo.repository import Repository
from . import report_contents
from .report import make_report
from .truth_score import score_calibrations, score_coadds

log = logging.getLogger("makeReport")


def score_rerun(repo) -> dict:
    """Score every fit and coadd of the rerun against ``ROOT/sim/truth``."""
    from ..sim.truth import load_truth

    truth = load_truth(repo.root / "sim")
    scores: dict = {}
    for solver in ("jointcal", "mosaic"):
        for tract_dir in sorted((repo.rerun_dir / f"{solver}-results").glob("*")):
            if tract_dir.is_dir():
                s = score_calibrations(tract_dir, truth, prefix=solver)
                s.pop("per_ccd", None)
                scores.update({f"{k} [tract {tract_dir.name}]": v for k, v in s.items()})
    c = score_coadds(report_contents.coadd_files(repo), truth)
    c.pop("per_patch", None)
    scores.update(c)
    return scores


def _body(argv) -> int:
    p = make_parser("makeReport.py", "Write the HTML report of a rerun", uses_ids=False)
    args = p.parse_args(argv)
    repo = Repository(args.root, registry_url=args.registry)
    repo.set_rerun(args.rerun)
    if (repo.root / "sim" / "truth").is_dir():
        scores = score_rerun(repo)
        write_text_atomic(repo.rerun_dir / "report" / "accuracy.yaml",
                          yaml.safe_dump(scores, sort_keys=False))
        for name, e in scores.items():
            flag = {True: "ok", False: "MISSED", None: ""}[e["ok"]]
            target = f" (target {e['target']})" if e["target"] is not None else ""
            log.info("%s: %.4g %s%s %s", name, e["value"], e["unit"], target, flag)
    path = make_report(repo)
    log.info("report written to %s", path)
    return 0


def main(argv=None) -> None:
    """Console-script entry point."""
    sys.exit(simple_main("makeReport", _body, argv))


if __name__ == "__main__":
    main()
