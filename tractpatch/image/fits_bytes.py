"""Small FITS files serialised directly to bytes, with the standard CHECKSUM/DATASUM.

For outputs written by the thousand (jointcal's per-CCD WCS and photoCalib files):
astropy's ``HDUList.writeto`` verifies and re-formats every card, which cost more than
fitting the WCS. Here the caller gives 80-character card images (e.g. from
:func:`card`) and optional image arrays; the checksums follow the FITS standard
(version 4.0, appendix J: 32-bit ones' complement sum, ASCII-encoded complement), so
astropy's ``fits.open(..., checksum=True)`` verifies them.
"""
from __future__ import annotations

import numpy as np

BLOCK = 2880
_EXCLUDE = frozenset(range(0x3A, 0x41)) | frozenset(range(0x5B, 0x61))


def real(v: float) -> str:
    """A FITS fixed-format real (at most 20 characters, 14+ significant digits)."""
    if not np.isfinite(v):
        raise ValueError(f"non-finite header value {v}")
    text = repr(float(v)).upper()
    if "." not in text and "E" not in text:
        text += ".0"
    p = 16
    while len(text) > 20:
        text, p = f"{v:.{p}E}", p - 1
    return text


def card(key: str, value, comment: str = "") -> str:
    """One card image (80 characters; a long string becomes CONTINUE cards)."""
    if isinstance(value, str):
        if len(value) > 60 or len(key) > 8 or not value.isascii():
            from astropy.io import fits

            return fits.Card(key, value, comment).image
        text = ("'" + value.replace("'", "''").ljust(8) + "'").ljust(20)
    elif isinstance(value, (bool, np.bool_)):
        text = ("T" if value else "F").rjust(20)
    elif isinstance(value, (int, np.integer)):
        text = str(int(value)).rjust(20)
    else:
        text = real(float(value)).rjust(20)
    image = f"{key:<8}= {text}"
    if comment:
        image += f" / {comment}"
    return image[:80].ljust(80)


def _pad(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % BLOCK)


def sum32(data: bytes) -> int:
    """The FITS 32-bit ones' complement sum of ``data`` (a multiple of 4 bytes)."""
    total = int(np.frombuffer(data, dtype=">u4").sum(dtype=np.uint64))
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def encode_checksum(value: int) -> str:
    """The 16-character ASCII encoding of ``value`` (FITS standard, appendix J)."""
    asc = [0] * 16
    for i in range(4):
        byte = (value >> (24 - 8 * i)) & 0xFF
        quotient, remainder = byte // 4 + 0x30, byte % 4
        ch = [quotient + remainder, quotient, quotient, quotient]
        check = True
        while check:  # keep the characters alphanumeric: move pairs off punctuation
            check = False
            for j in (0, 2):
                while ch[j] in _EXCLUDE or ch[j + 1] in _EXCLUDE:
                    ch[j] += 1
                    ch[j + 1] -= 1
                    check = True
        for j in range(4):
            asc[4 * j + i] = ch[j]
    return "".join(chr(asc[(k + 15) % 16]) for k in range(16))


def hdu_bytes(cards: list[str], data: np.ndarray | None = None, primary: bool = True,
              extname: str | None = None) -> bytes:
    """One HDU: the structural keywords, ``cards``, checksums, END, then the data.

    Parameters
    ----------
    cards : list of str
        Card images of the other keywords (no SIMPLE/XTENSION/BITPIX/NAXIS*/END).
    data : ndarray, optional
        Image (float64, int16/32/64 or uint8); numpy axis order reversed as FITS's.
    primary : bool
        Primary HDU (``SIMPLE``, ``EXTEND``) or an IMAGE extension.
    """
    if data is None:
        bitpix, shape, raw = 8, (), b""
    else:
        arr = np.asarray(data)
        kinds = {"f8": -64, "f4": -32, "i2": 16, "i4": 32, "i8": 64, "u1": 8}
        key = f"{arr.dtype.kind}{arr.dtype.itemsize}"
        if key not in kinds:
            raise ValueError(f"unsupported FITS image dtype {arr.dtype}")
        bitpix, shape = kinds[key], arr.shape
        raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder(">")).tobytes()
    head = [card("SIMPLE", True, "conforms to FITS standard") if primary
            else card("XTENSION", "IMAGE", "Image extension"),
            card("BITPIX", bitpix, "array data type"),
            card("NAXIS", len(shape), "number of array dimensions")]
    head += [card(f"NAXIS{k + 1}", int(n)) for k, n in enumerate(reversed(shape))]
    if primary:
        head.append(card("EXTEND", True))
    else:
        head += [card("PCOUNT", 0, "number of parameters"),
                 card("GCOUNT", 1, "number of groups")]
        if extname:
            head.append(card("EXTNAME", extname, "extension name"))
    raw = _pad(raw, b"\0")
    dsum = sum32(raw)
    tail = [card("CHECKSUM", "0" * 16, "HDU checksum"),
            card("DATASUM", str(dsum), "data unit checksum")]
    text = "".join(head + list(cards) + tail) + "END".ljust(80)
    header = _pad(text.encode("ascii"), b" ")
    total = sum32(header) + dsum
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    code = encode_checksum(~total & 0xFFFFFFFF)
    at = text.index("CHECKSUM= '") + 11
    header = header[:at] + code.encode("ascii") + header[at + 16:]
    return header + raw


def fits_bytes(hdus: list[bytes]) -> bytes:
    """A FITS file of HDUs made by :func:`hdu_bytes` (the first one primary)."""
    return b"".join(hdus)
