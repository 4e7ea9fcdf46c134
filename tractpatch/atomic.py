"""Atomic file writes: write to a temporary file in the target directory, then rename.

A reader never sees a half-written file; a run killed mid-write leaves only a
``.tmp-<name>.*`` file (random suffix) that nothing reads, and that
``showLedger.py --clean-tmp`` removes.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, mode: int = 0o644):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Parameters
    ----------
    path : str or Path
        Final destination. Parent directories are created.
    mode : int
        Permission bits of the final file.

    Yields
    ------
    Path
        Temporary file to write (it does not exist yet). On an exception it is removed
        and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # writers such as astropy refuse to overwrite
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_fits_atomic(path, hdulist) -> None:
    """Write an astropy ``HDUList`` to ``path`` atomically (checksums included)."""
    with atomic_path(path) as tmp:
        hdulist.writeto(tmp, checksum=True)
