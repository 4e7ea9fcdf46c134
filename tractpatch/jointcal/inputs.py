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


def select_sources(table, min_snr: float = 10.0, require_star: bool = True,
                   bad_flags: int = BAD_FLAGS) -> np.ndarray:
    """Boolean mask of well-measured point sources of an SRC table.

    Parameters
    ----------
    table : astropy Table
        SRC catalog (columns of docs/interfaces.md).
    min_snr : float
        Minimum PSF-flux signal-to-noise.
    require_star : bool
        Keep only ``is_star`` sources.
    bad_flags : int
        ``flags`` bits that reject a source.
    """
    flux = np.asarray(table["flux_psf"], float)
    err = np.asarray(table["flux_psf_err"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(err > 0, flux / err, 0.0)
    ok = np.isfinite(snr) & (snr >= min_snr) & (flux > 0)
    for c in ("x", "y", "x_err", "y_err"):
        ok &= np.isfinite(np.asarray(table[c], float))
    ok &= (np.asarray(table["x_err"], float) > 0) & (np.asarray(table["y_err"], float) > 0)
    if "flags" in table.colnames:
        ok &= (np.asarray(table["flags"]).astype(np.int64) & bad_flags) == 0
    if require_star and "is_star" in table.colnames:
        ok &= np.asarray(table["is_star"], bool)
    return ok


def read_src(path, min_snr: float = 10.0, require_star: bool = True):
    """Read one SRC catalog: its selected detections and its :class:`CcdImage`.

    Raises
    ------
    UserError
        The file lacks the columns or header keywords of docs/interfaces.md.
    """
    from astropy.io import fits
    from astropy.table import Table

    from ..image.wcs_io import read_wcs

    try:
        with fits.open(path) as hdul:
            hdu = hdul["SOURCES"] if "SOURCES" in hdul else hdul[1]
            header = hdu.header.copy()
            table = Table(hdu.data)
    except (OSError, KeyError, IndexError) as exc:
        raise UserError(f"{path}: not a readable SRC catalog ({exc}); "
                        "rerun detectSources.py for this CCD") from None
    missing = [c for c in ("x", "y", "x_err", "y_err", "flux_psf", "flux_psf_err")
               if c not in table.colnames]
    missing += [k for k in ("VISIT", "CCD", "NX", "NY") if k not in header]
    if missing:
        raise UserError(f"{path}: SRC catalog lacks {', '.join(missing)}; "
                        "rerun detectSources.py for this CCD")
    wcs = read_wcs(header, source=str(path))
    mjd = float(header.get("MJD-OBS", np.nan))
    image = CcdImage(int(header["VISIT"]), int(header["CCD"]), wcs, int(header["NX"]),
                     int(header["NY"]), mjd, str(header.get("FILTER", "")))
    ok = select_sources(table, min_snr, require_star)
    t = table[ok]
    n = len(t)
    det = Detections(np.full(n, image.visit), np.full(n, image.ccd), t["x"], t["y"],
                     t["x_err"], t["y_err"], t["flux_psf"], t["flux_psf_err"])
    return det, image


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
