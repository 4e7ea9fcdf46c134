"""Atomic file writes: write to a temporary file in the target directory, then rename.

A reader never sees a half-written file; a run killed mid-write leaves only a
``.tmp-<name>.*`` file (random suffix) that nothing reads, and that
``showLedger.py --clean-tmp`` removes.

One file: :func:`atomic_path` (and the ``write_*_atomic`` helpers) fsync the file before
the rename. Many files: :class:`AtomicBatch` writes all the temporary files, makes them
durable with one ``syncfs`` per file system (instead of one fsync per file, which
dominated writing the 64 small calibration files of a jointcal run), then renames them
all and fsyncs their directories -- the same guarantee: once ``commit`` returns, every
file is durable and complete; before, none is visible under its final name.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import ctypes.util
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


def _temp_next_to(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def _dir_fd(path):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        yield fd
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=1)
def _libc_syncfs():
    """libc's ``syncfs(fd)`` (Linux), or None where it is not available."""
    # the process's own symbols first: find_library runs ldconfig (tens of ms)
    for find in (lambda: None, lambda: ctypes.util.find_library("c")):
        try:
            fn = ctypes.CDLL(find(), use_errno=True).syncfs
        except (OSError, AttributeError, TypeError):
            continue
        fn.argtypes = [ctypes.c_int]
        return fn
    return None


def sync_filesystems(directories, files=()) -> None:
    """Flush to disk everything written on the file systems of ``directories``.

    One ``syncfs`` per distinct file system (Linux); elsewhere, or if it fails, an
    ``fsync`` of each of ``files``.
    """
    syncfs = _libc_syncfs()
    done = set()
    for d in directories:
        dev = os.stat(d).st_dev
        if dev in done:
            continue
        if syncfs is not None:
            with _dir_fd(d) as fd:
                if syncfs(fd) == 0:
                    done.add(dev)
                    continue
        break  # no syncfs: per-file fsync below
    else:
        return
    for f in files:
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())


class AtomicBatch:
    """Write many files atomically with one disk synchronisation.

    Each ``write_*`` puts the content in a temporary file next to its destination at
    once (nothing is held in memory); :meth:`commit` syncs the file systems, renames
    every temporary file onto its destination and fsyncs the directories;
    :meth:`abort` removes the temporary files. Use it as a context manager: commit on
    normal exit, abort on an exception (no destination is then touched).
    """

    def __init__(self):
        self._pending: list[tuple[Path, Path, int]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def __enter__(self) -> "AtomicBatch":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def write_bytes(self, path, data: bytes, mode: int = 0o644) -> None:
        """Stage ``data`` for ``path`` (visible there after :meth:`commit`)."""
        path = Path(path)
        tmp = _temp_next_to(path)
        try:
            tmp.write_bytes(data)
            os.chmod(tmp, mode)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self._pending.append((tmp, path, mode))

    def write_text(self, path, text: str) -> None:
        """Stage UTF-8 ``text`` for ``path``."""
        self.write_bytes(path, text.encode("utf-8"))

    def write_fits(self, path, hdulist) -> None:
        """Stage an astropy ``HDUList`` (checksums included) for ``path``."""
        import io

        buf = io.BytesIO()
        hdulist.writeto(buf, checksum=True)
        self.write_bytes(path, buf.getvalue())

    def commit(self) -> None:
        """Make every staged file durable, then visible under its final name."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            dirs = list(dict.fromkeys(str(p.parent) for _, p, _ in pending))
            sync_filesystems(dirs, [t for t, _, _ in pending])
        except BaseException:
            self._pending = pending
            self.abort()
            raise
        for tmp, path, _ in pending:
            os.replace(tmp, path)
        for d in dirs:  # the renames themselves
            with _dir_fd(d) as fd:
                os.fsync(fd)

    def abort(self) -> None:
        """Remove the staged temporary files; no destination is touched."""
        pending, self._pending = self._pending, []
        for tmp, _, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
