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

Star parameters may come in blocks: with proper motions a fitted star has position and
motion ``(xi, eta, mu_xi, mu_eta)``, and a measurement row depends on two of them (its
coordinate and the motion along it). ``D`` is then block diagonal with one B x B block
per star (parameter ``p`` is slot ``p // n_blocks`` of block ``p % n_blocks``); each
block is whitened by its Cholesky factor, ``D_k^-1 = W_k^T W_k``, so the same chunked
products ``(H_ts W^T)(W H_st)`` form the Schur complement. With ``B = 1`` this is the
diagonal elimination above.
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
    ``star_val``, (n,) or, for rows that depend on several parameters of one star block
    (position and proper motion), (n, s); ``r`` the weighted residuals
    (model - data) / sigma.
    """

    idx: np.ndarray
    val: np.ndarray
    star: np.ndarray
    star_val: np.ndarray
    r: np.ndarray

    @classmethod
    def concatenate(cls, parts: list["Rows"]) -> "Rows":
        m = max(p.idx.shape[1] for p in parts)

        def pad(a, fill, width):
            if a.shape[1] == width:
                return a
            out = np.full((a.shape[0], width), fill, a.dtype)
            out[:, :a.shape[1]] = a
            return out

        if all(np.ndim(p.star) == 1 for p in parts):
            star = np.concatenate([p.star for p in parts])
            star_val = np.concatenate([p.star_val for p in parts])
        else:
            s = max(_as_columns(p.star).shape[1] for p in parts)
            star = np.concatenate([pad(_as_columns(p.star), -1, s) for p in parts])
            star_val = np.concatenate([pad(_as_columns(p.star_val), 0.0, s)
                                       for p in parts])
        return cls(np.concatenate([pad(p.idx, -1, m) for p in parts]),
                   np.concatenate([pad(p.val, 0.0, m) for p in parts]),
                   star, star_val,
                   np.concatenate([p.r for p in parts]))


def _as_columns(a):
    """Star columns as (n, s): a 1-d column becomes (n, 1)."""
    a = np.asarray(a)
    return a[:, None] if a.ndim == 1 else a


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
        def _fill_ts(order, starts, idx, val, q, local, k0, k1, M):
            # M[j, :, k - k0]: rows' model derivatives times their whitened star
            # derivatives q[i, j] (zero for the motion slot of the other axis)
            m = idx.shape[1]
            nb = q.shape[1]
            for k in range(k0, k1):
                for p in range(starts[k], starts[k + 1]):
                    i = order[p]
                    for j in range(nb):
                        w = q[i, j]
                        if w == 0.0:
                            continue
                        for a in range(m):
                            ia = idx[i, a]
                            if ia >= 0:
                                M[j, local[ia], k - k0] += val[i, a] * w

        @njit(cache=True)
        def _whiten_blocks(D, W, rtol):
            # W_k = L_k^-1 with D_k = L_k L_k^T; a slot whose pivot vanishes (no
            # measurement, or fully degenerate with the others) is left out: zero row
            # and column of W_k, so D_k^-1 = W_k^T W_k leaves that parameter unchanged
            nk, nb, _ = D.shape
            L = np.zeros((nb, nb))
            ok = np.zeros(nb, np.bool_)
            for k in range(nk):
                L[:, :] = 0.0
                for j in range(nb):
                    djj = D[k, j, j]
                    sjj = djj
                    for col in range(j):
                        sjj -= L[j, col] * L[j, col]
                    ok[j] = djj > 0.0 and sjj > rtol * djj
                    if not ok[j]:
                        continue
                    L[j, j] = np.sqrt(sjj)
                    for i in range(j + 1, nb):
                        acc = D[k, i, j]
                        for col in range(j):
                            acc -= L[i, col] * L[j, col]
                        L[i, j] = acc / L[j, j]
                for c in range(nb):
                    for i in range(nb):
                        W[k, i, c] = 0.0
                    if not ok[c]:
                        continue
                    for i in range(c, nb):
                        if not ok[i]:
                            continue
                        acc = 1.0 if i == c else 0.0
                        for col in range(c, i):
                            acc -= L[i, col] * W[k, col, c]
                        W[k, i, c] = acc / L[i, i]

        _kernels = (_accumulate_tt, _fill_ts, _whiten_blocks)
    return _kernels


@dataclass
class StarBlocks:
    """The star-parameter block ``D`` of the normal matrix, whitened.

    ``col``/``cval`` (n, s): star columns of each row and their derivatives (-1: none);
    ``block`` (n,): the star block of each row (-1: none); ``slot`` (n, s) the columns'
    places in their block; ``W`` (n_blocks, B, B): ``D_k^-1 = W_k^T W_k`` (zero rows and
    columns for parameters no row constrains); ``gs``: the star gradient.
    """

    n_blocks: int
    size: int
    col: np.ndarray
    cval: np.ndarray
    block: np.ndarray
    slot: np.ndarray
    W: np.ndarray
    gs: np.ndarray

    def as_blocks(self, vec):
        """(n_star,) parameter vector -> (n_blocks, B) by block."""
        return vec.reshape(self.size, self.n_blocks).T

    def whiten(self, vec):
        """``W vec`` flattened block-major: element ``k * B + j``."""
        return np.einsum("kij,kj->ki", self.W, self.as_blocks(vec)).ravel()

    def apply_inverse(self, vec):
        """``D^-1 vec`` (zero for unconstrained parameters)."""
        y = np.einsum("kij,kj->ki", self.W, self.as_blocks(vec))
        return np.einsum("kji,kj->ki", self.W, y).T.ravel()

    def whitened_rows(self):
        """(n, B): each row's star derivatives times ``W_k^T``."""
        q = np.zeros((len(self.block), self.size))
        for c in range(self.col.shape[1]):  # s <= 2 columns, not a loop over stars
            v = np.nonzero(self.col[:, c] >= 0)[0]
            q[v] += self.cval[v, c, None] * self.W[self.block[v], :, self.slot[v, c]]
        return q

    def sparse_inverse(self):
        """``D^-1`` as a scipy.sparse matrix."""
        nb, B = self.n_blocks, self.size
        Dinv = np.einsum("kji,kjl->kil", self.W, self.W)
        k, i, l_ = np.nonzero(Dinv)
        return sp.csr_matrix((Dinv[k, i, l_], (i * nb + k, l_ * nb + k)),
                             shape=(nb * B, nb * B))


def star_blocks(rows: Rows, n_star: int, n_blocks: int | None = None) -> StarBlocks:
    """Assemble and whiten the block-diagonal star block of the normal matrix.

    Parameter ``p`` is slot ``p // n_blocks`` of block ``p % n_blocks`` (``n_blocks``
    None: every parameter its own 1 x 1 block). All star columns of one row must lie in
    one block.
    """
    nb = n_blocks or max(n_star, 1)
    B = max(n_star // nb, 1) if n_star else 1
    if n_star:
        col, cval = _as_columns(rows.star), _as_columns(rows.star_val)
    else:  # stars held fixed
        col, cval = np.full((len(rows.r), 1), -1), np.zeros((len(rows.r), 1))
    valid = col >= 0
    blk_c = np.where(valid, col % nb, -1)
    slot = np.where(valid, col // nb, 0)
    block = blk_c.max(axis=1)
    gs = np.bincount(col[valid], (cval * rows.r[:, None])[valid], minlength=n_star)
    if B == 1:
        d = np.bincount(col[valid], cval[valid] ** 2, minlength=n_star)
        W = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)[:, None, None]
        return StarBlocks(nb, 1, col, cval, block, slot, W, gs)
    D = np.zeros(nb * B * B)
    for a in range(col.shape[1]):
        for b in range(col.shape[1]):
            v = valid[:, a] & valid[:, b]
            D += np.bincount(block[v] * B * B + slot[v, a] * B + slot[v, b],
                             cval[v, a] * cval[v, b], minlength=nb * B * B)
    W = np.zeros((nb, B, B))
    _numba_kernels()[2](D.reshape(nb, B, B), W, 1e-10)
    return StarBlocks(nb, B, col, cval, block, slot, W, gs)


class SingularSystemError(DataQualityError):
    """The normal matrix is singular: an unconstrained parameter or degeneracy."""


def solve_step(rows: Rows, free_map: np.ndarray, n_free: int, n_star: int,
               dense_limit: int = 8000, chunk: int = 2048, n_blocks: int | None = None):
    """One Gauss–Newton step ``(d_theta_free, d_star)`` minimising ``|r + J d|^2``.

    Parameters
    ----------
    rows : Rows
        Rows at the current parameters.
    free_map : ndarray of int
        Model parameter index -> free index, -1 for fixed parameters.
    n_free, n_star : int
        Number of free model parameters and of star parameters (0 when stars are fixed).
    n_blocks : int, optional
        Number of star blocks (see :func:`star_blocks`); None: diagonal star block.
    """
    idx = np.where(rows.idx >= 0, free_map[np.maximum(rows.idx, 0)], -1)
    sb = star_blocks(rows, n_star, n_blocks)
    if n_free == 0:
        return np.zeros(0), -sb.apply_inverse(sb.gs)
    if n_free > dense_limit:
        return _solve_sparse(rows, idx, sb, n_free, n_star)
    if len(rows.r) <= SPARSE_FORMATION_ROWS:
        H, g, Hts, dinv, gs = _sparse_schur(rows, idx, sb, n_free, n_star)
        dt = _cholesky_solve(H.toarray(), -g)
        return dt, (-(dinv @ (gs + Hts.T @ dt)) if n_star else np.zeros(0))
    _accumulate_tt, _fill_ts, _ = _numba_kernels()
    H = np.zeros((n_free, n_free))
    g = np.zeros(n_free)
    _accumulate_tt(idx, rows.val, rows.r, H, g)
    if n_star:
        nb, B = sb.n_blocks, sb.size
        sel = np.nonzero(sb.block >= 0)[0]
        order = sel[np.argsort(sb.block[sel], kind="stable")]
        starts = np.searchsorted(sb.block[order], np.arange(nb + 1))
        q = sb.whitened_rows()
        gq = sb.whiten(sb.gs)
        local = np.full(n_free, -1, np.int64)
        step = max(1, chunk // B)
        for k0 in range(0, nb, step):
            k1 = min(nb, k0 + step)
            # only the model parameters this chunk of stars touches (stars are numbered
            # roughly by position, so a chunk sees few CCDs): a small dense block
            ir = idx[order[starts[k0]:starts[k1]]]
            mark = np.zeros(n_free + 1, bool)
            mark[ir] = True  # -1 lands on the extra last slot
            touched = np.nonzero(mark[:n_free])[0]
            if len(touched) == 0:
                continue
            local[touched] = np.arange(len(touched))
            M = np.zeros((B, len(touched), k1 - k0))
            _fill_ts(order, starts, idx, rows.val, q, local, k0, k1, M)
            gqc = gq[k0 * B:k1 * B].reshape(k1 - k0, B)
            for j in range(B):
                # one slot at a time, on the parameters it touches: an xi (or mu_xi)
                # column never touches the eta polynomial, so the GEMMs are 4x smaller
                # than on the whole chunk
                Mj = M[j]
                nz = np.flatnonzero((Mj != 0.0).any(axis=1))
                if len(nz) == 0:
                    continue
                if len(nz) < len(touched):
                    Mj = Mj[nz]
                tj = touched[nz]
                H[np.ix_(tj, tj)] -= Mj @ Mj.T  # BLAS: this chunk's Schur complement
                g[tj] -= Mj @ gqc[:, j]
            local[touched] = -1
    dt = _cholesky_solve(H, -g)
    ds = np.zeros(n_star)
    if n_star:
        t = np.where(idx >= 0, rows.val * dt[np.maximum(idx, 0)], 0.0).sum(axis=1)
        v = sb.col >= 0
        hsd = np.bincount(sb.col[v], (sb.cval * t[:, None])[v], minlength=n_star)
        ds = -sb.apply_inverse(sb.gs + hsd)
    return dt, ds


def _cholesky_solve(H, b):
    # the factorisation and its backends (LAPACK / CHOLMOD / SuperLU): .cholesky
    from .cholesky import solve

    return solve(H, b, error=SingularSystemError)


def _sparse_schur(rows, idx, sb, n_free, n_star):
    """``(S, g, H_ts, D^-1, g_s)``: the Schur complement ``S = H_tt - H_ts D^-1 H_st``
    (scipy.sparse, CSC) and its right-hand side ``g = g_t - H_ts D^-1 g_s``, formed by
    sparse products of the Jacobian blocks; stars without rows get ``D^-1 = 0``
    (``sb``: the whitened star blocks, :class:`StarBlocks`)."""
    n, m = idx.shape
    ok = idx >= 0
    ri = np.repeat(np.arange(n), m).reshape(n, m)[ok]
    Jt = sp.csr_matrix((rows.val[ok], (ri, idx[ok])), shape=(n, n_free))
    H = (Jt.T @ Jt).tocsc()
    g = Jt.T @ rows.r
    Hts = dinv = gs = None
    if n_star:
        has = sb.col >= 0
        ri = np.broadcast_to(np.arange(n)[:, None], has.shape)[has]
        Js = sp.csr_matrix((sb.cval[has], (ri, sb.col[has])), shape=(n, n_star))
        gs = sb.gs
        dinv = sb.sparse_inverse()
        Hts = (Jt.T @ Js).tocsr()
        H = (H - Hts @ dinv @ Hts.T).tocsc()
        g = g - Hts @ (dinv @ gs)
    return H, g, Hts, dinv, gs


def _solve_sparse(rows, idx, sb, n_free, n_star):
    """Sparse normal equations with the stars eliminated, solved by SuperLU.

    The same Schur complement as the dense path, in scipy.sparse throughout:
    ``S = H_tt - H_ts D^-1 H_st`` stays sparse (two visits couple only through stars
    they share, CCDs only through their visits), so memory grows with the number of
    non-zero blocks rather than with the square of the number of model parameters.
    """
    import scipy.sparse.linalg as spla

    H, g, Hts, dinv, gs = _sparse_schur(rows, idx, sb, n_free, n_star)
    diag = H.diagonal()
    if np.any(diag <= 0) or not np.all(np.isfinite(diag)):
        raise SingularSystemError("singular normal matrix: some parameters are not "
                                  "constrained by any measurement")
    s = sp.diags(1.0 / np.sqrt(diag))
    from .cholesky import factor  # CHOLMOD where installed, else SuperLU (.cholesky)

    lu = factor((s @ H @ s).tocsc(), error=SingularSystemError)
    dt = s @ lu.solve(s @ (-g))
    if not np.all(np.isfinite(dt)):
        raise SingularSystemError("singular normal matrix (non-finite step); lower the "
                                  "model order or select more stars")
    ds = np.zeros(n_star)
    if n_star:
        ds = -(dinv @ (gs + Hts.T @ dt))
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
    the chi^2 alone (for trial steps); ``problem.n_star`` the number of star parameters,
    ``problem.n_blocks`` (optional) their number of blocks (:func:`star_blocks`), and
    ``problem.star_rows`` (optional) rows without model derivatives, used when only
    the stars are fitted; star
    parameters no row depends on stay as they are and count in no degree of freedom.
    A step that raises chi^2 is halved up to 6 times; if it still does
    not decrease the fit is declared diverged (:class:`DataQualityError`). BLAS runs
    single-threaded (see :mod:`.threads`): the products and factorisations are small.

    A problem with its own assembly and solve (mosaic's per-image blocks,
    :class:`.mosaic_solver.BlockProblem`) provides ``problem.gauss_newton(theta, stars,
    free_theta, fit_stars, max_iter, tol)``, which is called instead.
    """
    own = getattr(problem, "gauss_newton", None)
    if own is not None:
        return own(theta, stars, free_theta, fit_stars, max_iter, tol)
    with single_blas_thread():
        return _gauss_newton(problem, theta, stars, free_theta, fit_stars, max_iter, tol,
                             dense_limit)


def line_search(problem, stars, trial_theta, ds, n_star: int, chi2: float):
    """The Gauss-Newton step, halved up to 6 times until ``problem.chi2`` does not rise.

    ``trial_theta(step)`` gives the model parameters ``step`` along the step, ``ds`` the
    star step (used where ``n_star``). Returns ``(theta, stars, chi2, step)`` of the
    accepted trial, or of the last one with ``step`` None when none was accepted (see
    :func:`no_descent`).
    """
    step = 1.0
    for _ in range(7):
        t_new = trial_theta(step)
        s_new = stars + step * ds if n_star else stars
        new_chi2 = problem.chi2(t_new, s_new)  # residuals only, no derivatives
        if np.isfinite(new_chi2) and new_chi2 <= chi2 * (1 + 1e-12):
            return t_new, s_new, new_chi2, step
        step *= 0.5
    return t_new, s_new, new_chi2, None


def take_step(theta, stars, t_new, s_new, n_star: int, chi2: float, new_chi2: float,
              tol: float) -> bool:
    """Move ``theta`` (and ``stars`` where ``n_star``) to the accepted trial, in place;
    True (converged) when chi^2 fell by less than ``tol`` relative."""
    theta[:] = t_new
    if n_star:
        stars[:] = s_new
    return (chi2 - new_chi2) / max(new_chi2, 1e-300) < tol


def no_descent(chi2: float, new_chi2: float, tol: float) -> bool:
    """After a failed :func:`line_search`: True (converged) where the shortest trial
    changed chi^2 by no more than rounding or ``tol``, else :class:`DataQualityError`."""
    if chi2 - new_chi2 > -1e-9 * chi2 or abs(new_chi2 - chi2) <= tol * chi2:
        return True
    raise DataQualityError(
        f"fit diverged: chi2 {chi2:.6g} rises to {new_chi2:.6g} along the "
        "Gauss-Newton step; check the input WCSs and the model order")


def _gauss_newton(problem, theta, stars, free_theta, fit_stars, max_iter, tol,
                  dense_limit) -> FitResult:
    free_theta = np.asarray(free_theta, bool)
    free_map = np.full(len(theta), -1, np.int64)
    free_map[free_theta] = np.arange(free_theta.sum())
    n_free = int(free_theta.sum())
    n_star = problem.n_star if fit_stars else 0
    n_blocks = getattr(problem, "n_blocks", None)
    # stars alone: rows without model derivatives where the problem offers them
    rows_of = problem.star_rows if n_free == 0 and hasattr(problem, "star_rows") \
        else problem.rows
    rows = rows_of(theta, stars)
    if n_star:
        col = _as_columns(rows.star)
        n_star_used = int(np.count_nonzero(np.bincount(col[col >= 0], minlength=n_star)))
    else:
        n_star_used = 0
    chi2 = float(rows.r @ rows.r)
    n_rows = len(rows.r)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        dt, ds = solve_step(rows, free_map, n_free, n_star, dense_limit,
                            n_blocks=n_blocks)
        rows = None  # free the Jacobian while trial steps are evaluated

        def trial_theta(step, dt=dt):
            t = theta.copy()
            t[free_theta] += step * dt
            return t

        t_new, s_new, new_chi2, step = line_search(problem, stars, trial_theta, ds, n_star,
                                                   chi2)
        if step is None:
            converged = no_descent(chi2, new_chi2, tol)
            break
        done = take_step(theta, stars, t_new, s_new, n_star, chi2, new_chi2, tol)
        chi2 = new_chi2
        if done:
            converged = True
            break
        if it < max_iter:
            rows = rows_of(theta, stars)
    ndof = n_rows - n_free - n_star_used
    return FitResult(chi2, int(ndof), it, converged)
