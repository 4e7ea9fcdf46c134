"""What the fit consumes: detections, CCD images with their header WCS, a reference
catalog — plain arrays in dataclasses, no per-star objects — and the readers that
build them from SRC catalogs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

import numpy as np

from ..errors import UserError

#: SRC ``flags`` bits that disqualify a source (saturated, edge, bad, CR, no-data).
BAD_FLAGS = 1 | 2 | 4 | 8 | 32


@dataclass
class CcdImage:
    """One CCD of one visit: the header WCS the fit starts from, size and epoch."""

    visit: int
    ccd: int
    wcs: object  # astropy.wcs.WCS, pixel origin 0
    nx: int
    ny: int
    mjd: float
    filter: str = ""


@dataclass
class Detections:
    """Selected sources of all CCDs, one row per detection (float64 arrays, pixels 0-based).

    ``flux``/``flux_err`` are instrumental (counts).
    """

    visit: np.ndarray
    ccd: np.ndarray
    x: np.ndarray
    y: np.ndarray
    x_err: np.ndarray
    y_err: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray

    def __post_init__(self):
        for f in fields(self):
            kind = np.int64 if f.name in ("visit", "ccd") else np.float64
            setattr(self, f.name, np.asarray(getattr(self, f.name), dtype=kind))

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index) -> "Detections":
        """The rows selected by a boolean mask or index array."""
        return Detections(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def concatenate(cls, parts: list["Detections"]) -> "Detections":
        """All rows of ``parts`` in order."""
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                      for f in fields(cls)})


@dataclass
class RefCatalog:
    """Reference stars: position (deg) at ``epoch_mjd``, errors (mas), proper motion
    (mas/yr, ``pm_ra`` includes cos dec) and flux in the fitted filter (nJy, NaN if none).
    """

    ra: np.ndarray
    dec: np.ndarray
    ra_err: np.ndarray
    dec_err: np.ndarray
    pm_ra: np.ndarray
    pm_dec: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    epoch_mjd: float

    def __post_init__(self):
        for f in fields(self):
            if f.name != "epoch_mjd":
                setattr(self, f.name, np.asarray(getattr(self, f.name), dtype=np.float64))

    def __len__(self) -> int:
        return len(self.ra)

    @classmethod
    def from_table(cls, table, epoch_mjd: float) -> "RefCatalog":
        """From a ``refcat.loader.load_region`` table (missing columns become 0/NaN)."""
        n = len(table)

        def col(name, default):
            if name in table.colnames:
                return np.asarray(table[name], dtype=np.float64)
            return np.full(n, default)

        return cls(col("ra", np.nan), col("dec", np.nan), col("ra_err", 10.0),
                   col("dec_err", 10.0), np.nan_to_num(col("pm_ra", 0.0)),
                   np.nan_to_num(col("pm_dec", 0.0)), col("flux", np.nan),
                   col("flux_err", np.nan), float(epoch_mjd))


#: SRC columns the fit reads (docs/interfaces.md); ``flags`` and ``is_star`` optional
SRC_COLUMNS = ("x", "y", "x_err", "y_err", "flux_psf", "flux_psf_err")
#: binary-table column keywords: not part of the image WCS, and most of an SRC header
_TABLE_KEYS = ("TTYPE", "TFORM", "TUNIT", "TNULL", "TDISP", "TSCAL", "TZERO", "TDIM")


def select_sources(table, min_snr: float = 10.0, require_star: bool = True,
                   bad_flags: int = BAD_FLAGS) -> np.ndarray:
    """Boolean mask of well-measured point sources of an SRC table.

    Parameters
    ----------
    table : astropy Table, FITS_rec or dict of arrays
        SRC catalog (columns of docs/interfaces.md).
    min_snr : float
        Minimum PSF-flux signal-to-noise.
    require_star : bool
        Keep only ``is_star`` sources.
    bad_flags : int
        ``flags`` bits that reject a source.
    """
    names = _colnames(table)
    flux = np.asarray(table["flux_psf"], float)
    err = np.asarray(table["flux_psf_err"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(err > 0, flux / err, 0.0)
    ok = np.isfinite(snr) & (snr >= min_snr) & (flux > 0)
    for c in ("x", "y", "x_err", "y_err"):
        ok &= np.isfinite(np.asarray(table[c], float))
    ok &= (np.asarray(table["x_err"], float) > 0) & (np.asarray(table["y_err"], float) > 0)
    if "flags" in names:
        ok &= (np.asarray(table["flags"]).astype(np.int64) & bad_flags) == 0
    if require_star and "is_star" in names:
        ok &= np.asarray(table["is_star"], bool)
    return ok


def _colnames(table):
    if hasattr(table, "colnames"):
        return table.colnames
    if hasattr(table, "names"):  # FITS_rec / structured array
        return table.names if table.names is not None else table.dtype.names
    return list(table)


def read_src(path, min_snr: float = 10.0, require_star: bool = True):
    """Read one SRC catalog: its selected detections and its :class:`CcdImage`.

    Only the columns the fit uses are converted (an SRC table has ~30), and the WCS is
    parsed from the header's WCS keywords alone. The usual layout (an empty primary HDU,
    then the ``SOURCES`` binary table) is read directly: header cards split by hand,
    rows with one ``np.fromfile`` (8 ms -> ~2 ms per file; 3 000 files make an HSC
    tract); anything else goes through astropy.io.fits.

    Raises
    ------
    UserError
        The file lacks the columns or header keywords of docs/interfaces.md.
    """
    try:
        fast = _read_src_direct(path)
    except (OSError, ValueError, KeyError, IndexError, UnicodeDecodeError):
        fast = None  # unusual or broken: astropy reads it (and names the problem)
    if fast is not None:
        wcs_cards, keys, cols = fast
    else:
        wcs_cards, keys, cols = _read_src_astropy(path)
    missing = [c for c in SRC_COLUMNS if c not in cols] + [
        k for k in ("VISIT", "CCD", "NX", "NY") if k not in keys]
    if missing:
        raise UserError(f"{path}: SRC catalog lacks {', '.join(missing)}; "
                        "rerun detectSources.py for this CCD")
    from astropy.io import fits

    from ..image.wcs_io import read_wcs

    wcs = read_wcs(fits.Header.fromstring("".join(wcs_cards)), source=str(path))
    mjd = keys.get("MJD-OBS")
    image = CcdImage(int(keys["VISIT"]), int(keys["CCD"]), wcs, int(keys["NX"]),
                     int(keys["NY"]), float(np.nan if mjd is None else mjd),
                     str(keys.get("FILTER", "")))
    ok = select_sources(cols, min_snr, require_star)
    n = int(ok.sum())
    det = Detections(np.full(n, image.visit), np.full(n, image.ccd),
                     *(cols[c][ok] for c in SRC_COLUMNS))
    return det, image


#: keywords of a celestial WCS (TAN, TAN-SIP, TPV, wcslib distortions): the header
#: given to astropy.wcs (parsing the ~150 cards of an SRC header cost as much again)
_WCS_KEY = re.compile(r"(WCSAXES|WCSNAME|CTYPE\d|CRPIX\d|CRVAL\d|CDELT\d|CUNIT\d|CROTA\d|"
                      r"CD\d_\d|PC\d_\d|PV\d_\d+|PS\d_\d+|[AB]P?_ORDER|[AB]P?_\d+_\d+|"
                      r"A_DMAX|B_DMAX|D[PQ]\d.*|C[PQ]DIS\d|C[PQ]ERR\d|RADESYS|RADECSYS|"
                      r"EQUINOX|EPOCH|LONPOLE|LATPOLE|MJD-OBS|DATE-OBS|MJDREF|TIMESYS)")
#: header keywords read besides the WCS
_SRC_KEYS = ("VISIT", "CCD", "NX", "NY", "MJD-OBS", "FILTER")


def _card_value(card: str):
    """The value of a fixed-format card image (string, bool, int or float)."""
    text = card[10:]
    stripped = text.lstrip()
    if stripped.startswith("'"):
        m = re.match(r"'((?:[^']|'')*)'", stripped)
        if m is None:
            raise ValueError(f"bad string card {card!r}")
        return m.group(1).replace("''", "'").rstrip()
    value = text.split("/", 1)[0].strip()
    if value in ("T", "F"):
        return value == "T"
    try:
        return int(value)
    except ValueError:
        return float(value.replace("D", "E"))


def _header_cards(f) -> list[str]:
    """The card images of the header at the file's position, up to END (which is
    dropped); the file is left at the start of the data."""
    cards: list[str] = []
    while True:
        block = f.read(2880)
        if len(block) < 2880:
            raise OSError("truncated FITS header")
        new = [block[i:i + 80].decode("ascii") for i in range(0, 2880, 80)]
        for k, c in enumerate(new):
            if c.rstrip() == "END":
                return cards + new[:k]
        cards += new


def _read_src_direct(path):
    """``(wcs_cards, keys, columns)`` of the usual SRC layout, or None when the file is
    laid out otherwise (the caller then uses astropy)."""
    with open(path, "rb") as f:
        primary = _header_cards(f)
        if not primary or not primary[0].startswith("SIMPLE  =") or any(
                c.startswith("NAXIS   =") and _card_value(c) != 0 for c in primary):
            return None  # a primary with data: not an SRC file as written
        cards = _header_cards(f)
        keys = {}
        for c in cards:
            k = c[:8].rstrip()
            if c[8:10] == "= " and (k in _SRC_KEYS or k in _TABLE_LAYOUT_KEYS
                                    or k.startswith(("TFORM", "TTYPE", "TSCAL", "TZERO"))):
                keys[k] = _card_value(c)
        if keys.get("XTENSION") != "BINTABLE" or keys.get("EXTNAME") != "SOURCES":
            return None
        layout = _row_dtype(keys)
        if layout is None:
            return None
        dtype, names = layout
        nrow = int(keys.get("NAXIS2", 0))
        rows = np.fromfile(f, dtype=dtype, count=nrow)
    if len(rows) < nrow:
        raise OSError(f"truncated table ({len(rows)} of {nrow} rows)")
    wcs_cards = [c for c in cards if _WCS_KEY.fullmatch(c[:8].rstrip())]
    return wcs_cards, keys, _columns(rows, dtype, names, SRC_COLUMNS + ("flags", "is_star"))


#: binary-table layout keywords
_TABLE_LAYOUT_KEYS = ("XTENSION", "EXTNAME", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT",
                      "TFIELDS")


def _read_src_astropy(path):
    """``(wcs_cards, keys, columns)`` through astropy.io.fits (any layout)."""
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            hdu = hdul["SOURCES"] if "SOURCES" in hdul else hdul[1]
            header = hdu.header
            cols = _read_columns(path, hdul, hdul.index_of(hdu), SRC_COLUMNS + (
                "flags", "is_star"))
            keys = {k: header[k] for k in _SRC_KEYS if k in header}
            wcs_cards = [c.image for c in header.cards
                         if _WCS_KEY.fullmatch(c.keyword)]
    except (OSError, KeyError, IndexError, TypeError) as exc:
        raise UserError(f"{path}: not a readable SRC catalog ({exc}); "
                        "rerun detectSources.py for this CCD") from None
    return wcs_cards, keys, cols


#: binary-table TFORM codes read directly (big-endian, FITS standard section 7.3)
_TFORM_DTYPE = {"L": "i1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4",
                "D": ">f8", "C": ">c8", "M": ">c16", "A": "S"}


def _row_dtype(h):
    """``(dtype, names)`` of a binary table's rows from its TFORMn/TTYPEn keywords (a
    dict or Header), or None for tables this does not cover (scaled or
    variable-length columns, heap, unknown codes, duplicate names)."""
    if h.get("XTENSION") != "BINTABLE" or h.get("PCOUNT", 0):
        return None
    fmt, names = [], []
    for k in range(1, int(h.get("TFIELDS", 0)) + 1):
        m = re.fullmatch(r"\s*(\d*)([A-Z])\S*\s*", str(h.get(f"TFORM{k}", "")))
        name = str(h.get(f"TTYPE{k}", f"col{k}"))
        if (m is None or m.group(2) not in _TFORM_DTYPE or f"TSCAL{k}" in h
                or f"TZERO{k}" in h or name in names):
            return None
        r = int(m.group(1) or 1)
        code = _TFORM_DTYPE[m.group(2)]
        fmt.append((name, f"S{r}") if code == "S" else (name, code, (r,)) if r != 1
                   else (name, code))
        names.append(name)
    dtype = np.dtype(fmt)
    if dtype.itemsize != int(h.get("NAXIS1", 0)):
        return None
    return dtype, names


def _columns(rows, dtype, names, wanted) -> dict:
    """The ``wanted`` columns (those present) of structured ``rows`` as native arrays."""
    out = {}
    for c in wanted:
        if c in names:
            a = rows[c]
            # FITS logical: 'T' true, 'F' false, 0 undefined
            if dtype[c].base == np.dtype("i1"):
                out[c] = a == ord("T")
            elif a.dtype.kind == "S":  # as astropy: str, trailing blanks removed
                out[c] = np.char.rstrip(a).astype(str)
            else:
                out[c] = a.astype(a.dtype.newbyteorder("="))
    return out


def _read_columns(path, hdul, index, wanted) -> dict:
    """Columns ``wanted`` (those present) of binary table HDU ``index`` as numpy arrays.

    Building astropy's column objects for all ~30 SRC columns costs more than reading
    the whole table: the row layout comes from the TFORMn keywords and the rows are
    read with one ``np.fromfile``. Tables this does not cover (scaled or variable-length
    columns, heap, unknown codes) go through astropy.
    """
    h = hdul[index].header
    layout = _row_dtype(h)
    if layout is None:
        data = hdul[index].data
        have = set(data.names) if data is not None else set()
        return {c: np.array(data[c]) for c in wanted if c in have}
    dtype, names = layout
    nrow = int(h.get("NAXIS2", 0))
    with open(path, "rb") as f:
        f.seek(hdul.fileinfo(index)["datLoc"])
        rows = np.fromfile(f, dtype=dtype, count=nrow)
    if len(rows) < nrow:
        raise OSError(f"truncated table ({len(rows)} of {nrow} rows)")
    return _columns(rows, dtype, names, wanted)


def _read_one(args):
    path, min_snr, require_star = args
    try:
        return read_src(path, min_snr, require_star)
    except UserError as exc:
        return str(exc)


def read_src_many(paths, min_snr: float = 10.0, require_star: bool = True,
                  processes: int = 1) -> list:
    """Read many SRC catalogs, in ``processes`` spawned worker processes when > 1.

    meas_mosaic read its catalogs on one core (half an hour for a large tract); the
    reading is independent per CCD. Returns, in the order of ``paths``, either the
    ``(Detections, CcdImage)`` of :func:`read_src` or the one-line error of an
    unreadable file (the caller drops that CCD and goes on).
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(str(p), min_snr, require_star) for p in paths]
    # a daemonic worker (the task runner's pool) cannot start children: read serially
    if processes <= 1 or len(jobs) < 2 or mp.current_process().daemon:
        return [_read_one(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=min(processes, len(jobs)),
                             mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_read_one, jobs, chunksize=max(1, len(jobs) // (4 * processes))))
