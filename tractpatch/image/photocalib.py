"""Photometric calibration: nJy per count, constant or varying smoothly over the CCD.

The spatial form is a 2-D Chebyshev series in pixel coordinates scaled to [-1, 1] over
the CCD's bounding box::

    calib(x, y) = sum_ij C[i, j] * T_i(u) * T_j(v)
    u = (2 x - (x0 + x1)) / (x1 - x0),  v = (2 y - (y0 + y1)) / (y1 - y0)

A constant calibration has ``C = [[mean]]``. Because a focal-plane Chebyshev composed
with an affine CCD→focal-plane map is again a polynomial of the same order in CCD pixels,
this form represents the jointcal/mosaic "per-CCD constant × per-visit Chebyshev" models
exactly (after conversion of basis).

On disk (``jointcal_photoCalib-*.fits``): primary header ``CALIBMN`` (mean nJy/count over
the CCD), ``CALIBERR``, ``FLUXMAG0`` (counts of a 0 mag AB source = 3631e9 nJy / mean, the
HSC convention), ``BBOX_X0..Y1``; an image HDU ``CHEBYSHEV`` with ``C`` (axis 0 = x order,
axis 1 = y order).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import chebyshev as C

#: AB zero-point flux in nJy (3631 Jy).
AB_FLUX_NJY = 3631.0e9


@dataclass
class PhotoCalib:
    """Calibration to nJy per count.

    Parameters
    ----------
    coeffs : ndarray
        2-D Chebyshev coefficients ``C[i, j]`` (x order i, y order j), nJy/count.
    bbox : tuple of float
        ``(x0, y0, x1, y1)`` pixel box the Chebyshev variables are scaled over.
    error : float
        1-sigma uncertainty of the mean calibration (nJy/count).
    """

    coeffs: np.ndarray = field(default_factory=lambda: np.array([[1.0]]))
    bbox: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    error: float = 0.0

    @classmethod
    def constant(cls, calib: float, error: float = 0.0, bbox=(0.0, 0.0, 1.0, 1.0)):
        """A spatially constant calibration of ``calib`` nJy per count."""
        return cls(np.array([[float(calib)]]), tuple(map(float, bbox)), float(error))

    @classmethod
    def from_zero_point(cls, zp_ab: float, bbox=(0.0, 0.0, 1.0, 1.0)):
        """Calibration for an AB zero point (magnitude of a source of 1 count)."""
        return cls.constant(AB_FLUX_NJY * 10 ** (-0.4 * zp_ab), bbox=bbox)

    def _uv(self, x, y):
        x0, y0, x1, y1 = self.bbox
        u = (2 * np.asarray(x, float) - (x0 + x1)) / max(x1 - x0, 1e-300)
        v = (2 * np.asarray(y, float) - (y0 + y1)) / max(y1 - y0, 1e-300)
        return u, v

    @property
    def is_constant(self) -> bool:
        """True when the calibration does not vary over the CCD."""
        c = np.asarray(self.coeffs)
        return c.size == 1 or not np.any(c.ravel()[1:])

    def evaluate(self, x, y) -> np.ndarray:
        """nJy per count at pixel positions ``(x, y)`` (0-based)."""
        if self.is_constant:
            return np.full(np.broadcast(np.asarray(x), np.asarray(y)).shape,
                           float(np.asarray(self.coeffs).ravel()[0]))
        u, v = self._uv(x, y)
        return C.chebval2d(u, v, self.coeffs)

    def evaluate_image(self, shape: tuple[int, int]) -> np.ndarray:
        """nJy per count for every pixel of an image of ``shape`` = (ny, nx).

        Evaluated on the grid by separable Chebyshev sums (no per-pixel loop).
        """
        ny, nx = shape
        if self.is_constant:
            return np.full(shape, self.mean, dtype=np.float64)
        u, _ = self._uv(np.arange(nx), 0)
        _, v = self._uv(0, np.arange(ny))
        return C.chebgrid2d(u, v, self.coeffs).T  # chebgrid2d gives [x, y]

    @property
    def mean(self) -> float:
        """Mean calibration over the bounding box (nJy per count)."""
        if self.is_constant:
            return float(np.asarray(self.coeffs).ravel()[0])
        x0, y0, x1, y1 = self.bbox
        xs = np.linspace(x0, x1, 33)
        ys = np.linspace(y0, y1, 33)
        xx, yy = np.meshgrid(xs, ys)
        return float(np.mean(self.evaluate(xx, yy)))

    @property
    def flux_mag0(self) -> float:
        """Counts of a 0-mag AB source (the HSC ``FLUXMAG0`` keyword)."""
        return AB_FLUX_NJY / self.mean

    @property
    def zero_point(self) -> float:
        """AB magnitude of a source of one count."""
        return 2.5 * np.log10(self.flux_mag0)

    def counts_to_njy(self, counts, x=None, y=None):
        """Convert instrumental counts (at pixel ``x, y``) to nJy."""
        if x is None:
            return np.asarray(counts) * self.mean
        return np.asarray(counts) * self.evaluate(x, y)

    # --- FITS ---------------------------------------------------------------------
    def to_hdulist(self, extra_header=None):
        """An ``HDUList`` in the documented on-disk form."""
        from astropy.io import fits

        prim = fits.PrimaryHDU()
        h = prim.header
        h["CALIBMN"] = (self.mean, "mean calibration [nJy/count]")
        h["CALIBERR"] = (self.error, "error of CALIBMN [nJy/count]")
        h["FLUXMAG0"] = (self.flux_mag0, "counts of a 0 mag AB source")
        h["MAGZERO"] = (self.zero_point, "AB mag of 1 count")
        for k, v in zip(("BBOX_X0", "BBOX_Y0", "BBOX_X1", "BBOX_Y1"), self.bbox):
            h[k] = float(v)
        if extra_header:
            h.update(extra_header)
        cheb = fits.ImageHDU(np.asarray(self.coeffs, dtype=np.float64), name="CHEBYSHEV")
        cheb.header["COMMENT"] = "calib(x,y)=sum C[i,j] T_i(u) T_j(v); see BBOX_* in primary"
        return fits.HDUList([prim, cheb])

    @classmethod
    def from_hdulist(cls, hdul) -> "PhotoCalib":
        """Read the form written by :meth:`to_hdulist`."""
        h = hdul[0].header
        bbox = tuple(float(h[k]) for k in ("BBOX_X0", "BBOX_Y0", "BBOX_X1", "BBOX_Y1"))
        coeffs = np.array(hdul["CHEBYSHEV"].data, dtype=np.float64)
        # FITS stores the array transposed relative to numpy's [i, j] reading order only
        # for >2-D interpretations; 2-D arrays round-trip as written.
        return cls(coeffs, bbox, float(h.get("CALIBERR", 0.0)))

    def to_fits_bytes(self, extra_header=None) -> bytes:
        """The file :meth:`to_hdulist` describes, serialised directly (checksums
        included): for the thousands of per-CCD files of a calibration run, astropy's
        card-by-card verification in ``writeto`` cost more than the fit.

        ``extra_header``: dict of keyword -> value or (value, comment), or a Header.
        """
        from .fits_bytes import card, hdu_bytes

        cards = [card("CALIBMN", self.mean, "mean calibration [nJy/count]"),
                 card("CALIBERR", float(self.error), "error of CALIBMN [nJy/count]"),
                 card("FLUXMAG0", self.flux_mag0, "counts of a 0 mag AB source"),
                 card("MAGZERO", self.zero_point, "AB mag of 1 count")]
        cards += [card(k, float(v)) for k, v in
                  zip(("BBOX_X0", "BBOX_Y0", "BBOX_X1", "BBOX_Y1"), self.bbox)]
        if hasattr(extra_header, "cards"):
            cards += [c.image for c in extra_header.cards]
        else:
            for k, v in (extra_header or {}).items():
                v, comment = v if isinstance(v, tuple) else (v, "")
                cards.append(card(k, v, comment))
        comment = "COMMENT calib(x,y)=sum C[i,j] T_i(u) T_j(v); see BBOX_* in primary"
        return (hdu_bytes(cards) +
                hdu_bytes([comment.ljust(80)], np.asarray(self.coeffs, dtype=np.float64),
                          primary=False, extname="CHEBYSHEV"))

    def write(self, path, extra_header=None, batch=None) -> None:
        """Write atomically to ``path`` (or stage it in ``batch``, an
        :class:`tractpatch.atomic.AtomicBatch`, to appear when the batch commits)."""
        from ..atomic import write_bytes_atomic

        data = self.to_fits_bytes(extra_header)
        if batch is not None:
            batch.write_bytes(path, data)
        else:
            write_bytes_atomic(path, data)

    @classmethod
    def read(cls, path) -> "PhotoCalib":
        """Read a calibration file written by :meth:`write`."""
        from astropy.io import fits

        with fits.open(path) as hdul:
            return cls.from_hdulist(hdul)
