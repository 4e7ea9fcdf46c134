"""Sparse Gauss–Newton least squares with star parameters eliminated (Schur complement).

Every residual row depends on a few model parameters (a dense short list per row: the
polynomial coefficients of its visit/CCD) and on at most one star parameter (a fitted
star's coordinate or flux). The normal equations

    [H_tt  H_ts] [dt]   [-g_t]
    [H_st  D   ] [ds] = [-g_s],   D diagonal,

are reduced to the model block ``S = H_tt - H_ts D^-1 H_st`` — the ordering a sparse
Cholesky (CHOLMOD, as LSST's jointcal uses) would choose — so the solve costs one
Cholesky factorisation of the model-parameter block whatever the number of stars.
``H_tt`` is accumulated by a numba kernel from the per-row parameter lists, ``H_ts D^-1
H_st`` by dense BLAS products over chunks of stars; above ``dense_limit`` free model
parameters the same reduction is done in scipy.sparse and solved by sparse LU (``splu``).
Small problems (up to ``SPARSE_FORMATION_ROWS`` rows) form the same block with the
scipy.sparse products and factor it densely: no numba start-up for a sub-second fit.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from ..errors import DataQualityError
from .threads import single_blas_thread

log = logging.getLogger("jointcal")

# Up to this many residual rows the dense Schur complement is formed with scipy.sparse
# products: numba's start (import and loading the cached kernels, ~1 s) would cost more
# than the whole fit of a small problem. Measured on 2 cores: at ~65 k rows (HSC
# camera, 3 visits) the sparse formation spends 0.8 s more over a whole fit, about
# numba's start, so the kernels take over above 50 k rows.
SPARSE_FORMATION_ROWS = 50_000


@dataclass
class Rows:
    """Weighted residual rows of a least-squares problem.

    ``idx`` (n, m) model-parameter columns of each row (-1: unused slot), ``val`` (n, m)
    their derivatives; ``star`` the star-parameter column (-1: none) with derivative
    ``star_val``; ``r`` the weighted residuals (model - data) / sigma.
    """

    idx: np.ndarray
    val: np.ndarray
    star: np.ndarray
    star_val: np.ndarray
    r: np.ndarray

    @classmethod
    def concatenate(cls, parts: list["Rows"]) -> "Rows":
        m = max(p.idx.shape[1] for p in parts)

        def pad(a, fill):
            if a.shape[1] == m:
                return a
            out = np.full((a.shape[0], m), fill, a.dtype)
            out[:, :a.shape[1]] = a
            return out

        return cls(np.concatenate([pad(p.idx, -1) for p in parts]),
                   np.concatenate([pad(p.val, 0.0) for p in parts]),
                   np.concatenate([p.star for p in parts]),
                   np.concatenate([p.star_val for p in parts]),
                   np.concatenate([p.r for p in parts]))


_kernels = None


def _numba_kernels():
    """The numba kernels, compiled (or loaded from numba's cache) on first use only."""
    global _kernels
    if _kernels is None:
        from numba import njit

        @njit(cache=True)
        def _accumulate_tt(idx, val, r, H, g):
            n, m = idx.shape
            for i in range(n):
                for a in range(m):
                    ia = idx[i, a]
                    if ia < 0:
                        continue
                    va = val[i, a]
                    g[ia] += va * r[i]
                    for b in range(m):
                        ib = idx[i, b]
                        if ib >= 0:
                            H[ia, ib] += va * val[i, b]

        @njit(cache=True)
        def _fill_ts(order, starts, idx, val, star_val, scale, local, k0, k1, M):
            m = idx.shape[1]
            for k in range(k0, k1):
                for p in range(starts[k], starts[k + 1]):
                    i = order[p]
                    w = star_val[i] * scale[k]
                    for a in range(m):
                        ia = idx[i, a]
                        if ia >= 0:
                            M[local[ia], k - k0] += val[i, a] * w

        _kernels = (_accumulate_tt, _fill_ts)
    return _kernels


class SingularSystemError(DataQualityError):
    """The normal matrix is singular: an unconstrained parameter or degeneracy."""


def solve_step(rows: Rows, free_map: np.ndarray, n_free: int, n_star: int,
               dense_limit: int = 8000, chunk: int = 2048):
    """One Gauss–Newton step ``(d_theta_free, d_star)`` minimising ``|r + J d|^2``.

    Parameters
    ----------
    rows : Rows
        Rows at the current parameters.
    free_map : ndarray of int
        Model parameter index -> free index, -1 for fixed parameters.
    n_free, n_star : int
        Number of free model parameters and of star parameters (0 when stars are fixed).
    """
    idx = np.where(rows.idx >= 0, free_map[np.maximum(rows.idx, 0)], -1)
    star = rows.star if n_star else np.full(len(rows.r), -1)
    has_star = star >= 0
    d = np.bincount(star[has_star], rows.star_val[has_star] ** 2, minlength=n_star)
    gs = np.bincount(star[has_star], rows.star_val[has_star] * rows.r[has_star],
                     minlength=n_star)
    unconstrained = d <= 0
    d = np.where(unconstrained, 1.0, d)
    if n_free == 0:
        return np.zeros(0), -gs / d
    if n_free > dense_limit:
        return _solve_sparse(rows, idx, star, n_free, n_star)
    if len(rows.r) <= SPARSE_FORMATION_ROWS:
        H, g, Hts, dinv, gs = _sparse_schur(rows, idx, star, n_free, n_star)
        dt = _cholesky_solve(H.toarray(), -g)
        return dt, (-dinv * (gs + Hts.T @ dt) if n_star else np.zeros(0))
    _accumulate_tt, _fill_ts = _numba_kernels()
    H = np.zeros((n_free, n_free))
    g = np.zeros(n_free)
    _accumulate_tt(idx, rows.val, rows.r, H, g)
    if n_star:
        sel = np.nonzero(has_star)[0]
        order = sel[np.argsort(star[sel], kind="stable")]
        starts = np.searchsorted(star[order], np.arange(n_star + 1))
        scale = 1.0 / np.sqrt(d)
        gs_scaled = gs * scale
        local = np.full(n_free, -1, np.int64)
        for k0 in range(0, n_star, chunk):
            k1 = min(n_star, k0 + chunk)
            # only the model parameters this chunk of stars touches (stars are numbered
            # roughly by position, so a chunk sees few CCDs): a small dense block
            ir = idx[order[starts[k0]:starts[k1]]]
            mark = np.zeros(n_free + 1, bool)
            mark[ir] = True  # -1 lands on the extra last slot
            touched = np.nonzero(mark[:n_free])[0]
            if len(touched) == 0:
                continue
            local[touched] = np.arange(len(touched))
            M = np.zeros((len(touched), k1 - k0))
            _fill_ts(order, starts, idx, rows.val, rows.star_val, scale, local, k0, k1, M)
            H[np.ix_(touched, touched)] -= M @ M.T  # BLAS: this chunk's Schur complement
            g[touched] -= M @ gs_scaled[k0:k1]
            local[touched] = -1
    dt = _cholesky_solve(H, -g)
    ds = np.zeros(n_star)
    if n_star:
        t = np.where(idx >= 0, rows.val * dt[np.maximum(idx, 0)], 0.0).sum(axis=1)
        hsd = np.bincount(star[has_star], rows.star_val[has_star] * t[has_star],
                          minlength=n_star)
        ds = (-gs - hsd) / d
        ds[unconstrained] = 0.0
    return dt, ds


def _cholesky_solve(H, b):
    diag = np.diag(H).copy()
    if np.any(diag <= 0) or not np.all(np.isfinite(H)):
        bad = np.nonzero(~(diag > 0))[0]
        raise SingularSystemError(
            f"singular normal matrix: {len(bad)} model parameters are not constrained by "
            "any measurement (e.g. a CCD or visit without stars); lower the model order "
            "or drop those data")
    s = 1.0 / np.sqrt(diag)  # Jacobi scaling: parameters of very different units
    Hs = H * s[:, None] * s[None, :]
    # numpy's LAPACK, not scipy's: the wheels bundle two OpenBLAS copies, and after the
    # Schur products (numpy) the idle spinning threads of one pool starve the other's
    # potrf -- a 200 x 200 factorisation then took 0.5 s instead of 1 ms on 2 cores
    try:
        L = np.linalg.cholesky(Hs)
    except np.linalg.LinAlgError:
        raise SingularSystemError(
            "singular normal matrix (the model has a degeneracy the data do not fix, "
            "e.g. too few stars for the polynomial order); lower the model order or "
            "select more stars") from None
    # triangular solves are level-2 BLAS (single-threaded): no pool contention
    y = scipy.linalg.solve_triangular(L, b * s, lower=True, check_finite=False)
    return scipy.linalg.solve_triangular(L.T, y, lower=False, check_finite=False) * s


def _sparse_schur(rows, idx, star, n_free, n_star):
    """``(S, g, H_ts, D^-1, g_s)``: the Schur complement ``S = H_tt - H_ts D^-1 H_st``
    (scipy.sparse, CSC) and its right-hand side ``g = g_t - H_ts D^-1 g_s``, formed by
    sparse products of the Jacobian blocks; stars without rows get ``D^-1 = 0``."""
    n, m = idx.shape
    ok = idx >= 0
    ri = np.repeat(np.arange(n), m).reshape(n, m)[ok]
    Jt = sp.csr_matrix((rows.val[ok], (ri, idx[ok])), shape=(n, n_free))
    H = (Jt.T @ Jt).tocsc()
    g = Jt.T @ rows.r
    Hts = dinv = gs = None
    has = star >= 0
    if n_star:
        Js = sp.csr_matrix((rows.star_val[has], (np.nonzero(has)[0], star[has])),
                           shape=(n, n_star))
        d = np.asarray(Js.multiply(Js).sum(axis=0)).ravel()
        gs = Js.T @ rows.r
        dinv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
        Hts = (Jt.T @ Js).tocsr()
        H = (H - Hts @ sp.diags(dinv) @ Hts.T).tocsc()
        g = g - Hts @ (dinv * gs)
    return H, g, Hts, dinv, gs


def _solve_sparse(rows, idx, star, n_free, n_star):
    """Sparse normal equations with the stars eliminated, solved by SuperLU.

    The same Schur complement as the dense path, in scipy.sparse throughout:
    ``S = H_tt - H_ts D^-1 H_st`` stays sparse (two visits couple only through stars
    they share, CCDs only through their visits), so memory grows with the number of
    non-zero blocks rather than with the square of the number of model parameters.
    """
    import scipy.sparse.linalg as spla

    H, g, Hts, dinv, gs = _sparse_schur(rows, idx, star, n_free, n_star)
    diag = H.diagonal()
    if np.any(diag <= 0) or not np.all(np.isfinite(diag)):
        raise SingularSystemError("singular normal matrix: some parameters are not "
                                  "constrained by any measurement")
    s = sp.diags(1.0 / np.sqrt(diag))
    try:
        lu = spla.splu((s @ H @ s).tocsc(), permc_spec="MMD_AT_PLUS_A")
    except RuntimeError as exc:
        raise SingularSystemError(f"singular normal matrix ({exc}); lower the model "
                                  "order or select more stars") from None
    dt = s @ lu.solve(s @ (-g))
    if not np.all(np.isfinite(dt)):
        raise SingularSystemError("singular normal matrix (non-finite step); lower the "
                                  "model order or select more stars")
    ds = np.zeros(n_star)
    if n_star:
        ds = -dinv * (gs + Hts.T @ dt)
    return dt, ds


@dataclass
class FitResult:
    """Outcome of :func:`gauss_newton`."""

    chi2: float
    ndof: int
    n_iter: int
    converged: bool


def gauss_newton(problem, theta, stars, free_theta, fit_stars: bool, max_iter: int = 20,
                 tol: float = 1e-4, dense_limit: int = 8000) -> FitResult:
    """Minimise ``problem``'s chi^2 over the free parameters (in place).

    ``problem.rows(theta, stars)`` returns :class:`Rows`, ``problem.chi2(theta, stars)``
    the chi^2 alone (for trial steps); ``problem.n_star`` the number of star parameters. A step that raises chi^2 is halved up to 6 times; if it still does
    not decrease the fit is declared diverged (:class:`DataQualityError`). BLAS runs
    single-threaded (see :mod:`.threads`): the products and factorisations are small.
    """
    with single_blas_thread():
        return _gauss_newton(problem, theta, stars, free_theta, fit_stars, max_iter, tol,
                             dense_limit)


def _gauss_newton(problem, theta, stars, free_theta, fit_stars, max_iter, tol,
                  dense_limit) -> FitResult:
    free_theta = np.asarray(free_theta, bool)
    free_map = np.full(len(theta), -1, np.int64)
    free_map[free_theta] = np.arange(free_theta.sum())
    n_free = int(free_theta.sum())
    n_star = problem.n_star if fit_stars else 0
    rows = problem.rows(theta, stars)
    chi2 = float(rows.r @ rows.r)
    n_rows = len(rows.r)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        dt, ds = solve_step(rows, free_map, n_free, n_star, dense_limit)
        rows = None  # free the Jacobian while trial steps are evaluated
        step = 1.0
        for _ in range(7):
            t_new = theta.copy()
            t_new[free_theta] += step * dt
            s_new = stars + step * ds if n_star else stars
            new_chi2 = problem.chi2(t_new, s_new)  # residuals only, no derivatives
            if np.isfinite(new_chi2) and new_chi2 <= chi2 * (1 + 1e-12):
                break
            step *= 0.5
        else:
            if chi2 - new_chi2 > -1e-9 * chi2 or abs(new_chi2 - chi2) <= tol * chi2:
                converged = True
                break
            raise DataQualityError(
                f"fit diverged: chi2 {chi2:.6g} rises to {new_chi2:.6g} along the "
                "Gauss-Newton step; check the input WCSs and the model order")
        theta[:] = t_new
        if n_star:
            stars[:] = s_new
        rel = (chi2 - new_chi2) / max(new_chi2, 1e-300)
        chi2 = new_chi2
        if rel < tol:
            converged = True
            break
        if it < max_iter:
            rows = problem.rows(theta, stars)
    ndof = n_rows - n_free - n_star
    return FitResult(chi2, int(ndof), it, converged)
