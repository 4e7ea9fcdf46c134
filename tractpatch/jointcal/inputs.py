"""What the fit consumes: detections, CCD images with their header WCS, a reference
catalog — plain arrays in dataclasses, no per-star objects — and the readers that
build them from SRC catalogs.
"""
from __future__ import annotations

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
    parsed from the header without its table-column keywords.

    Raises
    ------
    UserError
        The file lacks the columns or header keywords of docs/interfaces.md.
    """
    from astropy.io import fits

    from ..image.wcs_io import read_wcs

    try:
        with fits.open(path) as hdul:
            hdu = hdul["SOURCES"] if "SOURCES" in hdul else hdul[1]
            header = hdu.header
            missing = [k for k in ("VISIT", "CCD", "NX", "NY") if k not in header]
            cols = _read_columns(path, hdul, hdul.index_of(hdu), SRC_COLUMNS + (
                "flags", "is_star"))
            missing = [c for c in SRC_COLUMNS if c not in cols] + missing
            if missing:
                raise UserError(f"{path}: SRC catalog lacks {', '.join(missing)}; "
                                "rerun detectSources.py for this CCD")
            wcs_header = fits.Header([c for c in header.cards
                                      if not c.keyword.startswith(_TABLE_KEYS)])
    except (OSError, KeyError, IndexError, TypeError) as exc:
        raise UserError(f"{path}: not a readable SRC catalog ({exc}); "
                        "rerun detectSources.py for this CCD") from None
    wcs = read_wcs(wcs_header, source=str(path))
    mjd = float(wcs_header.get("MJD-OBS", np.nan))
    image = CcdImage(int(wcs_header["VISIT"]), int(wcs_header["CCD"]), wcs,
                     int(wcs_header["NX"]), int(wcs_header["NY"]), mjd,
                     str(wcs_header.get("FILTER", "")))
    ok = select_sources(cols, min_snr, require_star)
    n = int(ok.sum())
    det = Detections(np.full(n, image.visit), np.full(n, image.ccd),
                     *(cols[c][ok] for c in SRC_COLUMNS))
    return det, image


#: binary-table TFORM codes read directly (big-endian, FITS standard section 7.3)
_TFORM_DTYPE = {"L": "i1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4",
                "D": ">f8", "C": ">c8", "M": ">c16", "A": "S"}


def _read_columns(path, hdul, index, wanted) -> dict:
    """Columns ``wanted`` (those present) of binary table HDU ``index`` as numpy arrays.

    Building astropy's column objects for all ~30 SRC columns costs more than reading
    the whole table: the row layout comes from the TFORMn keywords and the rows are
    read with one ``np.fromfile``. Tables this does not cover (scaled or variable-length
    columns, heap, unknown codes) go through astropy.
    """
    import re

    h = hdul[index].header
    nrow, width = int(h.get("NAXIS2", 0)), int(h.get("NAXIS1", 0))
    fmt, names, ok = [], [], h.get("XTENSION") == "BINTABLE" and not h.get("PCOUNT", 0)
    for k in range(1, int(h.get("TFIELDS", 0)) + 1):
        m = re.fullmatch(r"\s*(\d*)([A-Z])\S*\s*", str(h.get(f"TFORM{k}", "")))
        name = str(h.get(f"TTYPE{k}", f"col{k}"))
        if (m is None or m.group(2) not in _TFORM_DTYPE or f"TSCAL{k}" in h
                or f"TZERO{k}" in h or name in names):
            ok = False
            break
        r = int(m.group(1) or 1)
        code = _TFORM_DTYPE[m.group(2)]
        fmt.append((name, f"S{r}") if code == "S" else (name, code, (r,)) if r != 1
                   else (name, code))
        names.append(name)
    if ok:
        dtype = np.dtype(fmt)
        ok = dtype.itemsize == width
    if not ok:
        data = hdul[index].data
        have = set(data.names) if data is not None else set()
        return {c: np.array(data[c]) for c in wanted if c in have}
    with open(path, "rb") as f:
        f.seek(hdul.fileinfo(index)["datLoc"])
        rows = np.fromfile(f, dtype=dtype, count=nrow)
    if len(rows) < nrow:
        raise OSError(f"truncated table ({len(rows)} of {nrow} rows)")
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
