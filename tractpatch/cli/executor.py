"""Executors: run units of work serially, in local processes (``-j N``) or on Dask.

Workers rebuild the task once per process from the picklable :class:`TaskContext`.
"""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed

from tqdm import tqdm

_worker_task = None


def _init_worker(ctx):
    global _worker_task
    from .task import _setup_logging

    _setup_logging()
    _worker_task = ctx.make_task()


def _run_in_worker(ctx, data_id, retries, clobber):
    from .task import run_one

    global _worker_task
    if _worker_task is None:
        _init_worker(ctx)
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
            from distributed import Client

            with Client(cluster, timeout="30s") as client:
                futs = client.map(_run_on_dask, [ctx] * len(units), units,
                                  [retries] * len(units), [clobber] * len(units),
                                  pure=False)
                index = {f.key: i for i, f in enumerate(futs)}
                from distributed import as_completed as das_completed

                for fut in das_completed(futs):
                    i = index[fut.key]
                    try:
                        results[i] = fut.result()
                    except Exception as exc:  # worker lost: a fault
                        results[i] = UnitResult(units[i], "fault",
                                                f"{exc.__class__.__name__}: {exc}")
                    bar.update()
        elif processes > 1 and len(units) > 1:
            with ProcessPoolExecutor(max_workers=processes,
                                     mp_context=mp.get_context("spawn"),
                                     initializer=_init_worker, initargs=(ctx,)) as pool:
                futs = {pool.submit(_run_in_worker, ctx, u, retries, clobber): i
                        for i, u in enumerate(units)}
                for fut in as_completed(futs):
                    i = futs[fut]
                    try:
                        results[i] = fut.result()
                    except Exception as exc:  # a killed worker process: a fault
                        results[i] = UnitResult(units[i], "fault",
                                                f"{exc.__class__.__name__}: {exc}")
                    bar.update()
        else:
            task = ctx.make_task()
            for i, u in enumerate(units):
                results[i] = run_one(ctx, task, u, retries, clobber, doraise)
                bar.update()
    finally:
        bar.close()
    return results
