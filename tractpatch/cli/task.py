"""Command-line tasks: parse, configure, select data IDs, run units of work, report.

A task subclasses :class:`CmdLineTask`, sets ``name``, ``ConfigClass`` and ``level``,
and implements :meth:`CmdLineTask.run_unit` (one unit: a CCD, a patch, a tract...) and
optionally :meth:`CmdLineTask.units` (how ``--id`` expands) and
:meth:`CmdLineTask.finish` (after all units). The runner handles the rest: config saved
in the rerun and checked, the processing ledger (done units skipped, faults retried,
quality flags recorded), local or Dask parallelism, progress bars, one-line errors.

Units run in worker processes from a :class:`TaskContext` (picklable: the repository
root, rerun, registry URL and config), never from the parent's open connections.
"""
from __future__ import annotations

import errno
import logging
import re
import sys
import traceback
from dataclasses import dataclass, field

from .. import __version__
from ..errors import UserError
from ..repo.dataid import DataIdSpec, parse_id_args
from ..repo.registry import UpstreamNotDone
from ..repo.repository import Repository
from .config import TaskConfig
from .executor import run_units
from .parser import make_parser

log = logging.getLogger("tractpatch")


def provenance(task_name: str, config: TaskConfig) -> dict:
    """Header keywords recording the task, its config hash and the package version."""
    return {"TASK": task_name, "CFGHASH": config.config_hash(), "TPVERSN": __version__}


@dataclass
class TaskContext:
    """What a worker needs to run a unit: enough to reopen the repository."""

    task_cls: type
    root: str
    rerun: str | None
    registry_url: str | None
    config: TaskConfig
    options: dict = field(default_factory=dict)

    def make_task(self) -> "CmdLineTask":
        repo = Repository(self.root, registry_url=self.registry_url)
        if self.rerun:
            repo.rerun = self.rerun
            repo.input_reruns = repo.registry.rerun_chain(self.rerun)[1:]
        return self.task_cls(repo, self.config, self.options)


@dataclass
class UnitResult:
    """Outcome of one unit of work."""

    data_id: dict
    status: str  # done | skipped | quality | fault
    message: str | None = None
    value: object = None


class CmdLineTask:
    """Base class of the command-line tasks (see the module docstring)."""

    name = "task"
    description = ""
    ConfigClass = TaskConfig
    level = "ccd"  # ccd | visit | patch | tract | none: what one unit of work is
    needs_rerun = True
    uses_ids = True
    use_ledger = True

    def __init__(self, repo: Repository, config: TaskConfig, options: dict | None = None):
        self.repo = repo
        self.config = config
        self.options = options or {}
        self.log = logging.getLogger(self.name)

    # --- to override ----------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser) -> None:
        """Add task-specific options to the shared parser."""

    def units(self, ids: list[DataIdSpec], select: list[DataIdSpec]) -> list[dict]:
        """Data IDs of the units of work. Default: one unit per matching CCD."""
        rows = self.repo.registry.exposures(ids or None)
        return [{k: r[k] for k in ("visit", "ccd", "filter", "pointing", "field")}
                for r in rows]

    def run_unit(self, data_id: dict):
        """Process one unit; return a value for :meth:`finish`. Raise DataQualityError
        to flag the unit (the run goes on), UserError for unusable input."""
        raise NotImplementedError

    def finish(self, results: list[UnitResult]) -> None:
        """Run once after all units (in the parent process)."""

    # --- helpers ----------------------------------------------------------------------
    def provenance(self) -> dict:
        """Header keywords for this task's outputs."""
        return provenance(self.name, self.config)

    # --- the runner -------------------------------------------------------------------
    @classmethod
    def main(cls, argv: list[str] | None = None) -> int:
        """Entry point of the command; returns (and exits with) the exit status."""
        argv = sys.argv[1:] if argv is None else argv
        doraise = "--doraise" in argv
        _setup_logging()
        try:
            status = cls._main(argv)
        except UserError as exc:
            if doraise:
                raise
            print(f"{cls.name}: error: {exc}", file=sys.stderr)
            status = 2
        except KeyboardInterrupt:
            print(f"{cls.name}: interrupted", file=sys.stderr)
            status = 130
        return status

    @classmethod
    def _main(cls, argv):
        parser = make_parser(f"{cls.name}.py", cls.description, cls.uses_ids,
                             cls.needs_rerun)
        cls.add_arguments(parser)
        args = parser.parse_args(argv)
        config = cls.ConfigClass().with_overrides(args.config, args.configfile)
        if args.show == "config":
            print(config.to_yaml(), end="")
            return 0
        repo = Repository(args.root, registry_url=args.registry)
        if args.rerun:
            repo.set_rerun(args.rerun)
            if not repo.rerun_dir.exists():
                # the user deleted the rerun: its ledger no longer describes any output
                n = repo.registry.ledger_clear(repo.rerun)
                if n:
                    logging.getLogger(cls.name).info(
                        "rerun %s was deleted: forgot its %d ledger entries", repo.rerun, n)
        options = {k: v for k, v in vars(args).items()
                   if k not in ("root", "rerun", "config", "configfile", "id", "selectId")}
        task = cls(repo, config, options)
        ids = [parse_id_args(t) for t in (getattr(args, "id", None) or [])]
        select = [parse_id_args(t) for t in (getattr(args, "selectId", None) or [])]
        units = task.units(ids, select)
        if args.show == "data":
            for u in units:
                print(" ".join(f"{k}={v}" for k, v in u.items()))
            return 0
        if cls.uses_ids and cls.level != "none" and not units:
            what = " ".join(f"--id {s}" for s in ids) or "(no --id)"
            hint = ("; with tract=, only CCDs that overlap the tract count (see "
                    "findTractPatch.py --id ...)" if any("tract" in s.terms for s in ids)
                    else "")
            raise UserError(f"{what} matches no data in {repo.root}; check the keys "
                            "against the registry (--show data) or ingest the data first"
                            + hint)
        if repo.rerun is not None:
            save_config(repo, cls.name, config, args.clobber_config)
        ctx = TaskContext(cls, str(repo.root), repo.rerun, args.registry, config, options)
        results = run_units(ctx, units, processes=args.processes, cluster=args.cluster,
                            retries=args.retries, clobber=args.clobber_output,
                            progress=not args.no_progress, doraise=args.doraise)
        task.finish(results)
        return summarize(task.log, results)


def run_one(ctx: TaskContext, task: "CmdLineTask", data_id: dict, retries: int,
            clobber: bool, doraise: bool) -> UnitResult:
    """Run one unit with the ledger: skip done, retry faults, record quality flags."""
    reg = task.repo.registry
    rerun = task.repo.rerun or ""
    use_ledger = task.use_ledger and task.repo.rerun is not None
    if use_ledger and not clobber:
        row = reg.ledger_get(task.name, rerun, data_id)
        if row is not None and row["state"] == "done":
            return UnitResult(data_id, "skipped", row.get("quality"))
    attempt = 0
    while True:
        if use_ledger:
            reg.ledger_set(task.name, rerun, data_id, "running")
        try:
            value = task.run_unit(data_id)
        except UserError as exc:
            # bad input or unusable data (DataQualityError): flagged, never retried
            if use_ledger:
                reg.ledger_set(task.name, rerun, data_id, "done", quality=str(exc),
                               message=str(exc))
            if doraise:
                raise
            return UnitResult(data_id, "quality", str(exc))
        except UpstreamNotDone as exc:
            # an input unit of an earlier stage is not done: blocked, a fault that
            # retrying now cannot cure (the next run retries it)
            if use_ledger:
                reg.ledger_set(task.name, rerun, data_id, "pending", fault=True,
                               message=f"blocked: {exc}")
            if doraise:
                raise
            return UnitResult(data_id, "fault", f"blocked: {exc}")
        except Exception as exc:  # a fault: I/O error, bug, killed resource — retried
            msg = f"{exc.__class__.__name__}: {exc}"
            if use_ledger:
                reg.ledger_set(task.name, rerun, data_id, "pending", fault=True,
                               message=msg)
            if doraise:
                raise
            if _is_disk_full(exc):
                # every further unit would fail the same way: end the run, one line
                raise UserError(disk_full_message(exc, data_id, task)) from None
            attempt += 1
            if attempt > retries:
                task.log.debug("%s", traceback.format_exc())
                return UnitResult(data_id, "fault", msg)
            continue
        if use_ledger:
            reg.ledger_set(task.name, rerun, data_id, "done")
        return UnitResult(data_id, "done", None, value)


def ledger_fault(ctx: TaskContext, data_id: dict, message: str) -> None:
    """Record a fault of one unit from outside its process (its worker died)."""
    if not (ctx.task_cls.use_ledger and ctx.rerun):
        return
    Repository(ctx.root, registry_url=ctx.registry_url).registry.ledger_set(
        ctx.task_cls.name, ctx.rerun, data_id, "pending", fault=True, message=message)


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(exc: OSError, data_id: dict, task: "CmdLineTask") -> str:
    """One line naming the file that could not be written and the remedy."""
    name = exc.filename or exc.filename2
    if name:
        # atomic writes go through ".tmp-<name>.<random>": name the final file
        name = re.sub(r"(^|/)\.tmp-(.+)\.[^./]+$", r"\1\2", str(name))
    else:
        name = f"the outputs of rerun {task.repo.rerun} ({task.repo.root / 'rerun'})"
    ident = " ".join(f"{k}={v}" for k, v in data_id.items())
    what = "disk quota exceeded" if exc.errno == errno.EDQUOT else "no space left on device"
    return (f"{ident}: {what} writing {name}; free space on that filesystem (or raise "
            "the quota) and run the same command again: units already done are kept, "
            "no partial file was left under its final name")


def save_config(repo: Repository, task_name: str, config: TaskConfig,
                clobber: bool) -> None:
    """Save the config in the rerun; refuse a different one unless ``clobber``."""
    from ..atomic import write_text_atomic

    path = repo.path("config", task=task_name)
    text = config.to_yaml()
    if path.exists() and path.read_text() != text and not clobber:
        import yaml

        old = yaml.safe_load(path.read_text()) or {}
        new = yaml.safe_load(text)
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise UserError(f"rerun {repo.rerun}: config of {task_name} differs from the saved "
                        f"one ({', '.join(diff) or 'format'}); use --clobber-config or "
                        "another --rerun")
    if not path.exists() or path.read_text() != text:
        write_text_atomic(path, text)


def summarize(log, results: list[UnitResult]) -> int:
    """Log one summary line (and one line per problem).

    Exit status 1 if faults remain, 2 if every unit was flagged as unusable (nothing was
    made), else 0.
    """
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
        if r.status in ("quality", "fault"):
            ident = " ".join(f"{k}={v}" for k, v in r.data_id.items())
            log.warning("%s %s: %s", ident, "skipped" if r.status == "quality" else
                        "failed", r.message)
    if results:
        log.info("%d units: %s", len(results),
                 ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if counts.get("fault"):
        return 1
    if results and counts.get("quality") == len(results):
        return 2  # every unit was unusable: the run made nothing
    return 0


def _setup_logging():
    root = logging.getLogger()
    if not any(getattr(h, "_tractpatch", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
        h._tractpatch = True
        root.addHandler(h)
        root.setLevel(logging.INFO)
    for noisy in ("distributed", "numba", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def simple_main(name: str, body, argv: list[str] | None = None) -> int:
    """Run a command that is not a per-data-ID task with the shared error handling.

    ``body(argv)`` returns the exit status; a UserError ends in one line and status 2.
    """
    argv = sys.argv[1:] if argv is None else argv
    _setup_logging()
    try:
        return body(argv)
    except UserError as exc:
        if "--doraise" in argv:
            raise
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
