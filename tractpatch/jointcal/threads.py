"""One BLAS thread for small linear algebra.

The numpy and scipy wheels each bundle an OpenBLAS with its own thread pool. On a few
shared cores, multi-threaded BLAS on small matrices (a 200 x 200 Cholesky, a 625 x 55
least-squares fit) spends far longer waking, spinning and contending than computing:
the 200 x 200 factorisation measured 80-500 ms instead of 1 ms. Small solves therefore
run with one thread per pool (through threadpoolctl when it is installed; without it
nothing changes), large ones keep the default.
"""
from __future__ import annotations

from contextlib import nullcontext

_controller = None
_unavailable = False


def single_blas_thread(active: bool = True):
    """Context manager limiting every loaded BLAS to one thread (if ``active``).

    Cheap to enter (~15 microseconds): the loaded libraries are found once.
    """
    global _controller, _unavailable
    if not active or _unavailable:
        return nullcontext()
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _unavailable = True
            return nullcontext()
        import scipy.linalg  # noqa: F401  load scipy's OpenBLAS so the controller sees it

        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def blas_single_threaded(func):
    """Decorator: run ``func`` inside :func:`single_blas_thread`."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with single_blas_thread():
            return func(*args, **kwargs)

    return wrapper
