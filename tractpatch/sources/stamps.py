"""Pixel stamps around many sources: the vectorised measurements' common ground.

A stamp is the ``(2 half + 1)^2`` pixels centred on a source's nearest pixel; the
measurements cut stamps for blocks of sources at once (fancy indexing on flat pixel
indices), so their sums become batched numpy products with no Python loop per source.
"""
from __future__ import annotations

import numpy as np


def source_blocks(n: int, half: int, budget: int = 4_000_000):
    """Slices over ``n`` sources keeping stamp arrays near ``budget`` elements."""
    step = max(1, budget // (2 * half + 1) ** 2)
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def stamp_index(x, y, half: int, shape):
    """Flat pixel indices (n, m, m), ``m = 2 half + 1``, of the stamps centred on
    ``rint(x), rint(y)`` (clipped to the image), which stamp pixels lie on the image,
    and the stamps' pixel columns ``gx`` (n, m) and rows ``gy`` (n, m).

    One flat index array serves every image plane (``np.take`` on the raveled planes
    is several times faster than 2-D fancy indexing).
    """
    ny, nx = shape
    off = np.arange(-half, half + 1)
    gx = np.rint(x).astype(np.int64)[:, None] + off
    gy = np.rint(y).astype(np.int64)[:, None] + off
    flat = np.clip(gy, 0, ny - 1)[:, :, None] * nx + np.clip(gx, 0, nx - 1)[:, None, :]
    inside = ((gy >= 0) & (gy < ny))[:, :, None] & ((gx >= 0) & (gx < nx))[:, None, :]
    return flat, inside, gx, gy


def window_stamps(arrays, bad, x, y, half):
    """Stamps of each image in ``arrays`` (their dtype, zero on masked and off-image
    pixels), the stamp pixels' image columns ``gx`` (n, m) and rows ``gy`` (n, m),
    ``m = 2 half + 1``, and which stamp pixels are usable (n, m, m).

    ``bad`` (uint8, or None when no pixel is masked) is only read when given.
    """
    flat, ok, gx, gy = stamp_index(x, y, half, arrays[0].shape)
    if bad is not None:
        ok &= np.take(bad.reshape(-1), flat) == 0
    out = [np.where(ok, np.take(a.reshape(-1), flat), 0.0) for a in arrays]
    return out, gx, gy, ok


def any_bad(bad):
    """``bad`` as contiguous uint8, or None when no pixel is masked (skips its reads)."""
    if bad is None:
        return None
    bad = np.ascontiguousarray(bad).view(np.uint8) if np.asarray(bad).dtype == bool \
        else np.ascontiguousarray(bad, dtype=np.uint8)
    return bad if bad.any() else None
