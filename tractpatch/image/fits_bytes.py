"""Small FITS files serialised directly to bytes, with the standard CHECKSUM/DATASUM.

For outputs written by the thousand (jointcal's per-CCD WCS and photoCalib files,
detectSources' SRC catalogs):
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
    return _assemble(head, cards, raw)


def _assemble(head: list[str], cards, raw: bytes) -> bytes:
    """Header (structural cards ``head``, ``cards``, CHECKSUM/DATASUM, END) and the
    padded data ``raw`` of one HDU."""
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


#: binary-table TFORM codes of numpy dtypes (FITS standard section 7.3.1)
_TFORM = {"b1": "L", "u1": "B", "i2": "I", "i4": "J", "i8": "K", "f4": "E", "f8": "D"}


def bintable_bytes(columns: dict, units: dict | None = None, extname: str | None = None,
                   cards=()) -> bytes:
    """A BINTABLE extension of equal-length 1-D ``columns`` (bool, uint8, int16/32/64,
    float32/64), ``units`` as ``TUNITn``, then ``cards``; booleans are FITS logicals
    (``'T'``/``'F'``), the rest big-endian."""
    units = units or {}
    names = list(columns)
    arrays = [np.asarray(columns[n]) for n in names]
    nrow = len(arrays[0]) if arrays else 0
    fields, forms = [], []
    for n, a in zip(names, arrays):
        key = f"{a.dtype.kind}{a.dtype.itemsize}"
        if key not in _TFORM or a.ndim != 1 or len(a) != nrow:
            raise ValueError(f"unsupported table column {n!r} ({a.dtype}, {a.shape})")
        forms.append(_TFORM[key])
        fields.append((n, "u1" if key == "b1" else a.dtype.newbyteorder(">")))
    rows = np.empty(nrow, dtype=fields)
    for n, a in zip(names, arrays):
        rows[n] = np.where(a, ord("T"), ord("F")) if a.dtype.kind == "b" else a
    head = [card("XTENSION", "BINTABLE", "binary table extension"),
            card("BITPIX", 8, "array data type"),
            card("NAXIS", 2, "number of array dimensions"),
            card("NAXIS1", rows.dtype.itemsize, "length of dimension 1"),
            card("NAXIS2", nrow, "length of dimension 2"),
            card("PCOUNT", 0, "number of group parameters"),
            card("GCOUNT", 1, "number of groups"),
            card("TFIELDS", len(names), "number of table fields")]
    for k, (n, form) in enumerate(zip(names, forms), start=1):
        head += [card(f"TTYPE{k}", n), card(f"TFORM{k}", form)]
        if units.get(n):
            head.append(card(f"TUNIT{k}", units[n]))
    if extname:
        head.append(card("EXTNAME", extname, "extension name"))
    return _assemble(head, cards, rows.tobytes())


def fits_bytes(hdus: list[bytes]) -> bytes:
    """A FITS file of HDUs made by :func:`hdu_bytes` (the first one primary)."""
    return b"".join(hdus)
