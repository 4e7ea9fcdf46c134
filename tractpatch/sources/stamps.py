"""Pixel stamps around many sources: the vectorised measurements' common ground.

A stamp is the ``(2 half + 1)^2`` pixels centred on a source's nearest pixel; the
measurements cut stamps for blocks of sources at once (fancy indexing on flat pixel
indices), so their sums become batched numpy products with no Python loop per source.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Stamps:
    """Pixel stamps around many sources (axis 0: source).

    ``dx``/``dy`` are pixel-centre offsets from the source position, ``inside`` marks
    stamp pixels that lie on the image.
    """

    dx: np.ndarray
    dy: np.ndarray
    inside: np.ndarray
    iy: np.ndarray
    ix: np.ndarray

    def take(self, arr: np.ndarray) -> np.ndarray:
        """Values of image ``arr`` on the stamps (off-image pixels read the edge)."""
        return arr[self.iy, self.ix]


def cut_stamps(x: np.ndarray, y: np.ndarray, half: int, shape) -> Stamps:
    """Stamps of ``(2 half + 1)^2`` pixels centred on the nearest pixel of each source."""
    ny, nx = shape
    off = np.arange(-half, half + 1)
    cx = np.rint(x).astype(np.int64)
    cy = np.rint(y).astype(np.int64)
    gx = cx[:, None, None] + off[None, None, :]
    gy = cy[:, None, None] + off[None, :, None]
    gx, gy = np.broadcast_arrays(gx, gy)
    inside = (gx >= 0) & (gx < nx) & (gy >= 0) & (gy < ny)
    return Stamps(dx=gx - x[:, None, None], dy=gy - y[:, None, None], inside=inside,
                  iy=np.clip(gy, 0, ny - 1), ix=np.clip(gx, 0, nx - 1))


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
