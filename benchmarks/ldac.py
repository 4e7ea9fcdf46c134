"""FITS-LDAC catalogs (the SExtractor/SCAMP format) for the benchmarks.

A FITS-LDAC file is an empty primary HDU followed, for each image (CCD), by a pair of
binary tables: ``LDAC_IMHEAD`` with a single ``Field Header Card`` cell holding the image
header as 80-character cards, then ``LDAC_OBJECTS`` with the sources.  SCAMP reads its
reference catalogs (``ASTREF_CATALOG FILE``) in this format too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table


def imhead_hdu(header: fits.Header) -> fits.BinTableHDU:
    """The ``LDAC_IMHEAD`` table holding ``header`` as one string of 80-char cards."""
    text = header.tostring(endcard=True, padding=False)
    ncards = len(text) // 80
    cards = np.array([text[80 * i:80 * (i + 1)] for i in range(ncards)], dtype="S80")
    col = fits.Column(name="Field Header Card", format=f"{80 * ncards}A",
                      dim=f"(80, {ncards})", array=cards.reshape(1, ncards))
    hdu = fits.BinTableHDU.from_columns([col])
    hdu.header["EXTNAME"] = "LDAC_IMHEAD"
    return hdu


def objects_hdu(table: Table) -> fits.BinTableHDU:
    """The ``LDAC_OBJECTS`` table of ``table``."""
    hdu = fits.BinTableHDU(table)
    hdu.header["EXTNAME"] = "LDAC_OBJECTS"
    return hdu


def write_ldac(path, blocks: list[tuple[fits.Header, Table]]) -> None:
    """Write a FITS-LDAC file with one (image header, objects) pair per block."""
    hdus = [fits.PrimaryHDU()]
    for header, table in blocks:
        hdus += [imhead_hdu(header), objects_hdu(table)]
    fits.HDUList(hdus).writeto(Path(path), overwrite=True)


def read_head_file(path) -> list[fits.Header]:
    """The header blocks of a SCAMP ``.head`` file (one per extension, each ending
    with ``END``), in extension order."""
    blocks, cards = [], []
    for line in Path(path).read_text().splitlines():
        if line.startswith("END") and line[3:].strip() == "":
            blocks.append(fits.Header.fromstring("\n".join(cards), sep="\n"))
            cards = []
        elif line.strip():
            cards.append(line)
    return blocks


def write_ldac_padded(path, blocks: list[tuple[fits.Header, Table]]) -> None:
    """:func:`write_ldac`, then the image-header cells made blank-padded as LDAC wants.

    astropy strips the trailing blanks of string cells and pads them with NULs (through
    ``fits.Column`` and through structured arrays alike): in :func:`write_ldac` each
    card that ends in blanks is shifted, and SCAMP 2.10 crashes (segmentation fault at
    "Examining Catalog") on the NULs. Here each header is stored as one string (only
    the blanks after ``END`` are lost), and the NULs of those cells are then replaced
    by blanks in the written file."""
    hdus = [fits.PrimaryHDU()]
    for header, table in blocks:
        text = header.tostring(endcard=True, padding=False)
        ncards = len(text) // 80
        col = fits.Column(name="Field Header Card", format=f"{80 * ncards}A",
                          array=np.array([text.encode("ascii")]))
        head = fits.BinTableHDU.from_columns([col])
        head.header.insert("TFORM1", ("TDIM1", f"(80, {ncards})"), after=True)
        head.header["EXTNAME"] = "LDAC_IMHEAD"
        hdus += [head, objects_hdu(table)]
    fits.HDUList(hdus).writeto(Path(path), overwrite=True)
    with fits.open(path) as h:
        cells = [(h.fileinfo(i)["datLoc"], int(h[i].header["NAXIS1"]))
                 for i in range(1, len(h), 2)]
    with open(path, "r+b") as f:
        for loc, n in cells:
            f.seek(loc)
            cell = f.read(n)
            f.seek(loc)
            f.write(cell.replace(b"\0", b" "))
