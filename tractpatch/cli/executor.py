"""Executors: run units of work serially, in local processes (``-j N``) or on Dask.

Workers rebuild the task once per process from the picklable :class:`TaskContext`.

A local worker process that dies (killed, out of memory, ``os._exit``) breaks a
``ProcessPoolExecutor``: the pool is then recreated and the unfinished units resubmitted.
The units that were running when it broke are the suspects; they are charged a fault
in the ledger and rerun one at a time, so the one that kills its worker is identified
and retried at most ``retries`` times while the innocent ones complete.
"""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from ..errors import UserError

_worker_task = None
_started = None  # shared byte array: 1 while a worker runs unit i (see _run_pool)


def _init_worker(ctx, started=None):
    global _worker_task, _started
    from .task import _setup_logging

    _setup_logging()
    _started = started
    _worker_task = ctx.make_task()


def _run_in_worker(ctx, data_id, retries, clobber, index=None):
    from .task import run_one

    global _worker_task
    if _worker_task is None:
        _init_worker(ctx)
    if _started is not None and index is not None:
        _started[index] = 1
    return run_one(ctx, _worker_task, data_id, retries, clobber, doraise=False)


def _run_on_dask(ctx, data_id, retries, clobber):
    """Dask entry: build the task per call (workers may be shared by several runs)."""
    from .task import run_one

    return run_one(ctx, ctx.make_task(), data_id, retries, clobber, doraise=False)


def run_units(ctx, units: list[dict], processes: int = 1, cluster: str | None = None,
              retries: int = 2, clobber: bool = False, progress: bool = True,
              doraise: bool = False) -> list:
    """Run every unit and return their :class:`UnitResult` in input order."""
    from .task import UnitResult, run_one

    if not units:
        return []
    bar = tqdm(total=len(units), desc=ctx.task_cls.name, unit="unit",
               disable=None if progress else True, leave=False)
    results: list = [None] * len(units)
    try:
        if cluster:
            import dask
            from distributed import Client

            timeout = dask.config.get("distributed.comm.timeouts.connect", "30s")
            try:
                client = Client(cluster, timeout=timeout)
            except (OSError, TimeoutError, ValueError) as exc:
                raise UserError(
                    f"--cluster {cluster}: cannot connect to a Dask scheduler there "
                    f"({str(exc).splitlines()[0]}); start one (`dask scheduler`, "
                    "dask-jobqueue) or check the address") from None
            with client:
                futs = client.map(_run_on_dask, [ctx] * len(units), units,
                                  [retries] * len(units), [clobber] * len(units),
                                  pure=False)
                index = {f.key: i for i, f in enumerate(futs)}
                from distributed import as_completed as das_completed

                for fut in das_completed(futs):
                    i = index[fut.key]
                    try:
                        results[i] = fut.result()
                    except UserError:
                        raise  # ends the run (e.g. disk full): one line, exit 2
                    except Exception as exc:  # worker lost: a fault
                        _record_fault(ctx, units[i], exc)
                        results[i] = UnitResult(units[i], "fault",
                                                f"{exc.__class__.__name__}: {exc}")
                    bar.update()
        elif processes > 1 and len(units) > 1:
            _run_pool(ctx, units, processes, retries, clobber, results, bar)
        else:
            task = ctx.make_task()
            for i, u in enumerate(units):
                results[i] = run_one(ctx, task, u, retries, clobber, doraise)
                bar.update()
    finally:
        bar.close()
    return results


def _make_pool(ctx, processes: int, started) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=processes, mp_context=mp.get_context("spawn"),
                               initializer=_init_worker, initargs=(ctx, started))


def _run_pool(ctx, units: list[dict], processes: int, retries: int, clobber: bool,
              results: list, bar) -> None:
    """Run ``units`` on a local process pool that survives dead workers.

    Fills ``results`` in place. Units go in parallel; when the pool breaks, the units a
    worker had started (flag in the shared array ``started``) become suspects and run
    alone in a fresh pool, one at a time; the others are resubmitted in parallel.
    """
    from .task import UnitResult, ledger_fault

    started = mp.get_context("spawn").Array("b", len(units), lock=False)
    todo = list(range(len(units)))  # run in parallel
    solo: list[int] = []            # suspects of a dead worker: run one at a time
    crashes = [0] * len(units)
    blind_breaks = 0  # breaks with no unit started (a worker dying while it starts)

    def charge(i, exc) -> None:
        """A dead worker ran unit i: record a fault; retry it alone or give up."""
        crashes[i] += 1
        msg = f"worker process died ({exc.__class__.__name__}: {exc})"
        ledger_fault(ctx, units[i], msg)
        if crashes[i] > retries:
            results[i] = UnitResult(units[i], "fault", msg)
            bar.update()
        else:
            solo.append(i)

    while todo or solo:
        pool = _make_pool(ctx, processes, started)
        try:
            broken = False
            while solo and not broken:
                i = solo.pop(0)
                started[i] = 0
                try:
                    results[i] = pool.submit(_run_in_worker, ctx, units[i], retries,
                                             clobber, i).result()
                    bar.update()
                except BrokenProcessPool as exc:
                    broken = True
                    charge(i, exc)
            if broken:
                continue
            futs = {}
            for i in todo:
                started[i] = 0
                futs[pool.submit(_run_in_worker, ctx, units[i], retries, clobber, i)] = i
            todo = []
            n_crashes = sum(crashes)
            for fut in as_completed(futs):
                i = futs[fut]
                try:
                    results[i] = fut.result()
                    bar.update()
                except BrokenProcessPool as exc:
                    if started[i]:
                        charge(i, exc)
                    else:
                        todo.append(i)  # never started: resubmit, no fault
                except UserError:
                    raise  # ends the run (e.g. disk full): one line, exit 2
                except Exception as exc:  # e.g. a result that cannot be pickled
                    _record_fault(ctx, units[i], exc)
                    results[i] = UnitResult(units[i], "fault",
                                            f"{exc.__class__.__name__}: {exc}")
                    bar.update()
            todo.sort()
            if todo and sum(crashes) == n_crashes:  # broke, no unit was running
                blind_breaks += 1
                if blind_breaks > retries:
                    for i in todo:
                        results[i] = UnitResult(units[i], "fault", "worker processes "
                                                "die before running any unit")
                        bar.update()
                    todo = []
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _record_fault(ctx, data_id: dict, exc: BaseException) -> None:
    """Record in the ledger a fault the unit's own process could not record."""
    from .task import ledger_fault

    ledger_fault(ctx, data_id, f"{exc.__class__.__name__}: {exc}")
