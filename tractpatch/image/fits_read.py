"""Direct reads of plain (uncompressed, unscaled) FITS image HDUs into native arrays.

Why: astropy reads an image into a fresh big-endian buffer and every consumer converts
it to native byte order with a second full copy; for a 2048x4176 CCD each fresh 34 MB
array costs page faults (and, with numpy's madvise-hugepage, kernel memory compaction),
so reading our three-plane MEF took 0.05-0.6 s. Here each plane is ONE new native
array, filled through a 1 MiB buffer that stays in cache: the file's bytes are read
into the buffer and byte-swapped into the array (the array's memory is written once,
not written by ``read`` and then swapped in place: ~0.026 s instead of ~0.035 s for
the three planes).

Only HDUs whose data section *is* the pixel array take this path: an uncompressed
``PrimaryHDU``/``ImageHDU`` (not tile-compressed, not random groups) with 2 axes, a
standard BITPIX, no ``BSCALE``/``BZERO`` other than 1/0 and no ``BLANK`` (astropy would
scale, shift to unsigned, or turn blanks into NaN), in a plain (not gzip'ed) FITS file.
Everything else returns None and the caller reads it through astropy. Files are opened
read-only.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from astropy.io import fits

from ..errors import UserError

#: Pixel type of each FITS BITPIX, native byte order (astropy gives the same types).
BITPIX_DTYPES = {8: np.dtype(np.uint8), 16: np.dtype(np.int16), 32: np.dtype(np.int32),
                 64: np.dtype(np.int64), -32: np.dtype(np.float32),
                 -64: np.dtype(np.float64)}

#: Bytes read per step: fits in L2 cache, so the swap reads it back from the cache.
CHUNK_BYTES = 1 << 20

#: The first bytes of an uncompressed FITS file (gzip/bzip2/zip files start otherwise,
#: and astropy's data offsets then refer to the decompressed stream).
FITS_MAGIC = b"SIMPLE  ="


def _int_card(header, key, default):
    value = header.get(key, default)
    return value if type(value) is int else None  # bool, float, str: not plain


def plain_image_layout(hdu) -> tuple[tuple[int, int], np.dtype] | None:
    """Shape and pixel type of a plain 2-D image HDU, or None when astropy must read it.

    Parameters
    ----------
    hdu : astropy.io.fits HDU, from a file

    Returns
    -------
    ((ny, nx), dtype) or None
        None for tile-compressed, random-groups and table HDUs, images that are not
        2-D, non-standard BITPIX, ``BSCALE``/``BZERO`` other than 1/0 (scaled or
        unsigned data), a ``BLANK`` keyword, or non-default ``PCOUNT``/``GCOUNT``.
    """
    # Exact types: CompImageHDU and GroupsHDU subclass these two.
    if type(hdu) not in (fits.PrimaryHDU, fits.ImageHDU):
        return None
    h = hdu.header
    dtype = BITPIX_DTYPES.get(_int_card(h, "BITPIX", None))
    if dtype is None or _int_card(h, "NAXIS", None) != 2:
        return None
    nx, ny = _int_card(h, "NAXIS1", None), _int_card(h, "NAXIS2", None)
    if nx is None or ny is None or nx <= 0 or ny <= 0:
        return None
    if "BLANK" in h or _int_card(h, "PCOUNT", 0) != 0 or _int_card(h, "GCOUNT", 1) != 1:
        return None
    try:
        if float(h.get("BSCALE", 1)) != 1.0 or float(h.get("BZERO", 0)) != 0.0:
            return None
    except (TypeError, ValueError):
        return None
    return (ny, nx), dtype


def read_plain_image(hdu, path, name) -> np.ndarray | None:
    """The pixels of a plain image HDU read straight from the file, or None.

    Parameters
    ----------
    hdu : astropy.io.fits HDU
        An HDU of the file ``path`` opened by astropy (headers parsed; data not read).
    path : str or Path
        The file, opened here again read-only.
    name : str
        The HDU's name for error messages.

    Returns
    -------
    ndarray or None
        A new owned, writeable, C-contiguous, native-endian array bit-identical to
        astropy's ``hdu.data``; None when the HDU or the file is not plain (see
        :func:`plain_image_layout`): read it through astropy then.

    Raises
    ------
    UserError
        The file ends before the pixel data does (truncated), or cannot be read.
    """
    layout = plain_image_layout(hdu)
    info = hdu.fileinfo()
    if layout is None or not info:
        return None
    shape, dtype = layout
    offset = int(info["datLoc"])
    nbytes = shape[0] * shape[1] * dtype.itemsize
    try:
        with open(path, "rb", buffering=0) as f:
            if f.read(len(FITS_MAGIC)) != FITS_MAGIC:
                return None
            size = os.fstat(f.fileno()).st_size
            if offset + nbytes > size:  # check before allocating what a bad header claims
                raise _truncated(path, name, offset + nbytes - size)
            arr = np.empty(shape, dtype)
            f.seek(offset)
            if sys.byteorder == "little" and dtype.itemsize > 1:
                got = _read_big_endian(f, arr.reshape(-1))
            else:  # bytes already in native order
                got = _read_fully(f, memoryview(arr.reshape(-1).view(np.uint8)))
    except OSError as exc:
        raise UserError(f"{path}[{name}]: pixel data cannot be read ({exc}); "
                        "the file is truncated or corrupt: re-copy it") from None
    if got < nbytes:
        raise _truncated(path, name, nbytes - got)
    return arr


def _read_big_endian(f, flat: np.ndarray) -> int:
    """Fill native ``flat`` from big-endian bytes at ``f``'s position; bytes read.

    Stops early (returning fewer bytes than ``flat.nbytes``) when the file ends.
    """
    big = flat.dtype.newbyteorder(">")
    per = max(CHUNK_BYTES // flat.itemsize, 1)
    buf = np.empty(per * flat.itemsize, np.uint8)
    view = memoryview(buf)
    got = 0
    for start in range(0, flat.size, per):
        count = min(per, flat.size - start)
        n = _read_fully(f, view[:count * flat.itemsize])
        got += n
        if n < count * flat.itemsize:
            break
        flat[start:start + count] = buf[:n].view(big)  # the byte swap
    return got


def _read_fully(f, buf: memoryview) -> int:
    """Read into ``buf`` until it is full or the file ends; the byte count read."""
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


def _truncated(path, name, missing: int) -> UserError:
    return UserError(f"{path}[{name}]: pixel data cannot be read (the file ends "
                     f"{missing} bytes before the data does); the file is truncated or "
                     "corrupt: re-copy it")
