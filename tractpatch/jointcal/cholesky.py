"""Factor a symmetric positive-definite normal matrix ``H`` once, solve ``H x = b``.

Two backends, one API (:func:`factor` returns an object with ``solve(b)``):

``cholmod``
    CHOLMOD's supernodal sparse Cholesky through scikit-sparse (as LSST's jointcal),
    with its fill-reducing ordering; used for sparse ``H`` when ``sksparse`` imports.
``scipy``
    The fallback, always available: a dense ``H`` is factored by LAPACK ``potrf``
    (numpy) after Jacobi scaling, a sparse ``H`` by SuperLU (``scipy.sparse.linalg.splu``,
    ``MMD_AT_PLUS_A`` ordering; scipy has no sparse Cholesky).

``auto`` (the default) picks ``cholmod`` for sparse matrices when it is installed and
``scipy`` otherwise. Dense matrices always use LAPACK: a dense matrix has no sparsity for
CHOLMOD to exploit (``backend="cholmod"`` by name still sends it there). The backend is chosen per call (``backend=``) or for a block of code
with :func:`use_backend` (the tasks wrap the fit in it with config ``choleskyBackend``).

Install CHOLMOD on Debian 12 (SuiteSparse 5.12; scikit-sparse 0.5 needs SuiteSparse 7)::

    apt-get install -y libsuitesparse-dev
    .venv/bin/pip install "scikit-sparse<0.5"
"""
from __future__ import annotations

import contextlib
from functools import lru_cache

import numpy as np

BACKENDS = ("auto", "cholmod", "scipy")
_state = {"backend": "auto"}


class NotPositiveDefinite(ArithmeticError):
    """The matrix is singular or not positive definite (a degeneracy of the model)."""


@lru_cache(maxsize=1)
def cholmod_available() -> bool:
    """Whether scikit-sparse's CHOLMOD wrapper imports."""
    try:
        import sksparse.cholmod  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def use_backend(name: str):
    """Make ``name`` the default backend inside the ``with`` block.

    Raises
    ------
    ValueError
        Unknown name, or ``cholmod`` when scikit-sparse is not installed.
    """
    # fail before the block, not inside the fit; "auto" imports scikit-sparse only when
    # a sparse system is factored (the small, dense systems never need it)
    if name != "auto":
        resolve_backend(name, sparse=True)
    old = _state["backend"]
    _state["backend"] = name
    try:
        yield
    finally:
        _state["backend"] = old


def resolve_backend(name: str | None, sparse: bool) -> str:
    """The backend that :func:`factor` uses for ``name`` (None: the current default)."""
    name = name or _state["backend"]
    if name not in BACKENDS:
        raise ValueError(f"unknown Cholesky backend {name!r}; choose one of {BACKENDS}")
    if name == "cholmod" and not cholmod_available():
        raise ValueError("choleskyBackend=cholmod but scikit-sparse is not installed: "
                         "apt-get install libsuitesparse-dev; pip install 'scikit-sparse<0.5' "
                         "(or use choleskyBackend=auto)")
    if not sparse and name != "cholmod":
        return "scipy"  # a dense matrix: LAPACK unless CHOLMOD is asked for by name
    if name == "auto":
        return "cholmod" if cholmod_available() else "scipy"
    return name


class _DenseFactor:
    """LAPACK Cholesky of the Jacobi-scaled dense matrix."""

    def __init__(self, H):
        import scipy.linalg

        self._solve_tri = scipy.linalg.solve_triangular
        diag = np.diag(H).copy()
        if np.any(~(diag > 0)) or not np.all(np.isfinite(H)):
            bad = int(np.count_nonzero(~(diag > 0)))
            raise NotPositiveDefinite(
                f"singular normal matrix: {bad} model parameters are not constrained by "
                "any measurement (e.g. a CCD or visit without stars); lower the model "
                "order or drop those data")
        self.s = 1.0 / np.sqrt(diag)  # Jacobi scaling: parameters of very different units
        # numpy's LAPACK, not scipy's: the wheels bundle two OpenBLAS copies, and after
        # the Schur products (numpy) the idle spinning threads of one pool starve the
        # other's potrf -- a 200 x 200 factorisation then took 0.5 s instead of 1 ms
        try:
            self.L = np.linalg.cholesky(H * self.s[:, None] * self.s[None, :])
        except np.linalg.LinAlgError:
            raise NotPositiveDefinite(
                "singular normal matrix (the model has a degeneracy the data do not fix, "
                "e.g. too few stars for the polynomial order); lower the model order or "
                "select more stars") from None

    def solve(self, b):
        # triangular solves are level-2 BLAS (single-threaded): no pool contention
        y = self._solve_tri(self.L, np.asarray(b) * self.s, lower=True, check_finite=False)
        return self._solve_tri(self.L.T, y, lower=False, check_finite=False) * self.s


def _scaled_sparse(H):
    """``(S H S, s)`` with ``S = diag(s)``, ``s = 1/sqrt(diag H)`` (Jacobi scaling: a
    unit diagonal whatever the parameters' units), CSC."""
    import scipy.sparse as sp

    H = sp.csc_matrix(H)
    diag = H.diagonal()
    if np.any(~(diag > 0)) or not np.all(np.isfinite(diag)):
        raise NotPositiveDefinite("singular normal matrix: some parameters are not "
                                  "constrained by any measurement")
    s = 1.0 / np.sqrt(diag)
    S = sp.diags(s)
    return (S @ H @ S).tocsc(), s


class _SuperLUFactor:
    """scipy's sparse LU (no sparse Cholesky in scipy)."""

    def __init__(self, H):
        import scipy.sparse.linalg as spla

        Hs, self.s = _scaled_sparse(H)
        try:
            self._lu = spla.splu(Hs, permc_spec="MMD_AT_PLUS_A")
        except RuntimeError as exc:
            raise NotPositiveDefinite(f"singular normal matrix ({exc}); lower the model "
                                      "order or select more stars") from None

    def solve(self, b):
        return self._lu.solve(np.asarray(b, dtype=np.float64) * self.s) * self.s


class _CholmodFactor:
    """CHOLMOD's sparse Cholesky (scikit-sparse)."""

    def __init__(self, H):
        from sksparse.cholmod import CholmodNotPositiveDefiniteError, cholesky

        Hs, self.s = _scaled_sparse(H)
        try:
            # supernodal LL': a simplicial LDL' would factor an indefinite matrix
            self._f = cholesky(Hs, mode="supernodal")
        except CholmodNotPositiveDefiniteError as exc:
            raise NotPositiveDefinite(f"singular normal matrix ({exc}); lower the model "
                                      "order or select more stars") from None

    def solve(self, b):
        return self._f(np.asarray(b, dtype=np.float64) * self.s) * self.s


def factor(H, backend: str | None = None, error: type[Exception] = NotPositiveDefinite):
    """Factor the symmetric positive-definite ``H`` (dense ndarray or scipy.sparse).

    Parameters
    ----------
    H : ndarray or scipy.sparse matrix
        Symmetric positive definite.
    backend : {"auto", "cholmod", "scipy"}, optional
        Default: the one set by :func:`use_backend` (``auto``).
    error : exception class
        Raised (with a one-line remedy) when ``H`` is singular or not positive definite.

    Returns
    -------
    object with ``solve(b) -> ndarray``
    """
    import scipy.sparse as sp

    sparse = sp.issparse(H)
    kind = resolve_backend(backend, sparse)
    try:
        if kind == "scipy" and not sparse:
            return _DenseFactor(np.asarray(H, dtype=np.float64))
        if not sparse:
            H = sp.csc_matrix(np.asarray(H, dtype=np.float64))
        return (_CholmodFactor if kind == "cholmod" else _SuperLUFactor)(H)
    except NotPositiveDefinite as exc:
        if error is NotPositiveDefinite:
            raise
        raise error(str(exc)) from None


def solve(H, b, backend: str | None = None, error: type[Exception] = NotPositiveDefinite):
    """``H^-1 b`` for symmetric positive-definite ``H`` (see :func:`factor`)."""
    return factor(H, backend, error).solve(b)
