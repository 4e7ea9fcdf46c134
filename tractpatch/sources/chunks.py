"""Row chunks of CCD-sized planes.

Element-wise work on a whole 2048 x 4176 plane makes a CCD-sized temporary per
operation; each costs thousands of page faults (and, with numpy's huge-page advice, the
kernel's memory compaction) and streams through memory. Done on chunks of rows, the
temporaries are small, reused by the allocator and stay in cache.
"""
from __future__ import annotations


def row_slices(n_rows: int, rows: int = 128):
    """Slices of ``rows`` rows covering ``n_rows`` (the last one shorter)."""
    for start in range(0, n_rows, rows):
        yield slice(start, min(n_rows, start + rows))
