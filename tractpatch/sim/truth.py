"""The simulator's truth: the true pixel→sky map and calibration of every CCD, the objects.

Files in ``ROOT/sim/truth/`` (formats in docs/simulator.md):

- ``model.yaml``: camera (CCD layout, rotations, QE factors, distortion), filters (base
  calibration), illumination, PSF, and one entry per visit (pointing, rotator angle,
  epoch, seeing, transparency, sky, header WCS errors, satellite trail);
- ``objects.fits``: the true objects (stars and galaxies).

Usage::

    from tractpatch.sim.truth import load_truth
    t = load_truth("ROOT/sim")
    ra, dec = t.pixel_to_sky(visit, ccd, x, y)       # 0-based pixels
    x, y = t.sky_to_pixel(visit, ccd, ra, dec)
    nJy_per_count = t.calibration(visit, ccd, x, y)
    ra_v, dec_v = t.object_positions(visit)          # stars moved to the visit epoch
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from astropy.table import Table
from astropy.wcs import WCS

from ..atomic import write_fits_atomic, write_text_atomic
from ..errors import UserError
from ..image.photocalib import AB_FLUX_NJY
from . import camera as cam

FORMAT_VERSION = 1

#: Mean Julian year of MJD 51544.5 (J2000.0): epoch = 2000 + (mjd - 51544.5) / 365.25.
J2000_MJD = 51544.5


def mjd_to_epoch(mjd):
    """Julian epoch (decimal year) of an MJD."""
    return 2000.0 + (np.asarray(mjd, float) - J2000_MJD) / 365.25


@dataclass
class SimTruth:
    """The true model of a simulated survey (see the module docstring).

    Attributes
    ----------
    camera : Camera
    filters : dict
        ``{filter: {"zero_point": ZP, "calib0": nJy per count}}``.
    illumination : dict
        ``{"a": ..., "b": ...}`` of ``L = 1 + a rho^2 + b fx / R``.
    psf : dict
        ``{"beta": ..., "variation": ...}``.
    visit_info : dict
        visit id → dict of the visit's parameters.
    objects : astropy.table.Table
        True objects (columns in docs/simulator.md).
    detector : dict
        gain, read noise, saturation, exptime.
    seed : int
    """

    camera: cam.Camera
    filters: dict
    illumination: dict
    psf: dict
    visit_info: dict
    objects: Table | None = None
    detector: dict = field(default_factory=dict)
    seed: int = 0
    preset: str = ""

    # --- lists ---------------------------------------------------------------------
    @property
    def visits(self) -> list[int]:
        """Visit ids, sorted."""
        return sorted(self.visit_info)

    @property
    def ccds(self) -> list[int]:
        """CCD ids, sorted."""
        return [int(c) for c in self.camera.ccd]

    def visit(self, visit: int) -> dict:
        """Parameters of one visit."""
        try:
            return self.visit_info[int(visit)]
        except KeyError:
            raise KeyError(f"visit {visit} is not simulated (visits {self.visits})") \
                from None

    def ccd_shape(self, ccd: int | None = None) -> tuple[int, int]:
        """(ny, nx) of a CCD."""
        return self.camera.ny, self.camera.nx

    # --- astrometry ------------------------------------------------------------------
    def pixel_to_sky(self, visit, ccd, x, y):
        """True RA, Dec (deg, ICRS) of 0-based pixel positions of ``(visit, ccd)``."""
        v = self.visit(visit)
        fx, fy = self.camera.to_focal(ccd, x, y)
        return cam.focal_to_sky(fx, fy, self.camera.pixel_scale, self.camera.k1,
                                v["rotation"], v["ra"], v["dec"])

    def sky_to_pixel(self, visit, ccd, ra, dec):
        """True 0-based pixel positions of RA, Dec (deg) on ``(visit, ccd)``."""
        v = self.visit(visit)
        fx, fy = cam.sky_to_focal(ra, dec, self.camera.pixel_scale, self.camera.k1,
                                  v["rotation"], v["ra"], v["dec"])
        return self.camera.from_focal(ccd, fx, fy)

    def focal_plane(self, ccd, x, y):
        """Focal-plane pixel coordinates of CCD pixels (for scoring focal-plane terms)."""
        return self.camera.to_focal(ccd, x, y)

    def header_wcs(self, visit, ccd):
        """The (erroneous, distortion-free) TAN WCS written in the exposure header."""
        v = self.visit(visit)
        return cam.tan_wcs(self.camera, ccd, v["hdr_ra"], v["hdr_dec"], v["hdr_rotation"])

    def sip_wcs(self, visit, ccd, degree: int = 4, grid: int = 16):
        """A TAN-SIP astropy WCS fitted to the true mapping of ``(visit, ccd)``.

        Linear least squares on a ``grid x grid`` pixel grid: tangent point at the CCD
        centre, polynomial of ``degree`` for the standard coordinates, its linear part
        the CD matrix and the rest the SIP ``A``/``B`` terms. The distortion is a cubic
        in field angle, so degree >= 3 reproduces the truth to far below 1 mas (e.g.
        to make calexps with the true WCS in tests).
        """
        from astropy.wcs import Sip

        ny, nx = self.ccd_shape(ccd)
        cx, cy = (nx - 1) / 2, (ny - 1) / 2
        ra0, dec0 = self.pixel_to_sky(visit, ccd, cx, cy)
        gx, gy = np.meshgrid(np.linspace(-0.5, nx - 0.5, grid),
                             np.linspace(-0.5, ny - 0.5, grid))
        u, v = gx.ravel() - cx, gy.ravel() - cy
        ra, dec = self.pixel_to_sky(visit, ccd, gx.ravel(), gy.ravel())
        xi, eta = cam.sky_to_tangent(ra, dec, ra0, dec0)
        scale = max(nx, ny) / 2.0  # conditioning: fit in u/scale, v/scale
        terms = [(p, q) for p in range(degree + 1) for q in range(degree + 1 - p)]
        design = np.column_stack([(u / scale) ** p * (v / scale) ** q for p, q in terms])
        cxi, *_ = np.linalg.lstsq(design, xi, rcond=None)
        ceta, *_ = np.linalg.lstsq(design, eta, rcond=None)
        coef = {pq: np.array([cxi[k], ceta[k]]) / scale ** sum(pq)
                for k, pq in enumerate(terms)}
        cd = np.column_stack([coef[(1, 0)], coef[(0, 1)]])
        cdinv = np.linalg.inv(cd)
        a = np.zeros((degree + 1, degree + 1))
        b = np.zeros((degree + 1, degree + 1))
        for (p, q), c in coef.items():
            if p + q >= 2:
                a[p, q], b[p, q] = cdinv @ c
        # the constant term (tangent point offset, ~0) goes into CRPIX
        shift = cdinv @ coef[(0, 0)]
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        w.wcs.crval = [float(ra0), float(dec0)]
        w.wcs.crpix = [cx + 1 - shift[0], cy + 1 - shift[1]]
        w.wcs.cd = cd
        w.wcs.radesys = "ICRS"
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
        w.pixel_shape = (nx, ny)
        return w

    # --- photometry -------------------------------------------------------------------
    def illumination_factor(self, fx, fy):
        """Focal-plane illumination factor L(fx, fy)."""
        r = self.camera.fp_radius
        rho2 = (np.asarray(fx, float) ** 2 + np.asarray(fy, float) ** 2) / r ** 2
        return 1.0 + self.illumination["a"] * rho2 + self.illumination["b"] * \
            np.asarray(fx, float) / r

    def calibration(self, visit, ccd, x, y):
        """True calibration (nJy per count) at 0-based pixels of ``(visit, ccd)``:
        ``calib0[filter] * qe[ccd] * transparency[visit] * L(fx, fy)``."""
        v = self.visit(visit)
        i = self.camera.index(ccd)
        fx, fy = self.camera.to_focal(ccd, x, y)
        return (self.filters[v["filter"]]["calib0"] * self.camera.qe[i]
                * v["transparency"] * self.illumination_factor(fx, fy))

    def photo_calib(self, visit, ccd):
        """The true calibration of ``(visit, ccd)`` as a :class:`PhotoCalib` (exact: the
        focal-plane terms are quadratic and the CCD→focal-plane map is affine, so a 2nd
        order Chebyshev in CCD pixels represents it exactly)."""
        from numpy.polynomial import chebyshev as C

        from ..image.photocalib import PhotoCalib

        ny, nx = self.ccd_shape(ccd)
        bbox = (0.0, 0.0, float(nx), float(ny))
        u = np.cos(np.pi * (np.arange(5) + 0.5) / 5)  # Chebyshev nodes in [-1, 1]
        uu, vv = np.meshgrid(u, u, indexing="ij")
        x = (uu * nx + nx) / 2
        y = (vv * ny + ny) / 2
        vals = self.calibration(visit, ccd, x, y)
        vander = C.chebvander2d(uu.ravel(), vv.ravel(), [2, 2])
        coef, *_ = np.linalg.lstsq(vander, vals.ravel(), rcond=None)
        return PhotoCalib(coef.reshape(3, 3), bbox)

    def psf_fwhm(self, visit, ccd, x, y):
        """True PSF FWHM (arcsec) at 0-based pixels of ``(visit, ccd)``."""
        v = self.visit(visit)
        fx, fy = self.camera.to_focal(ccd, x, y)
        rho2 = (np.asarray(fx, float) ** 2 + np.asarray(fy, float) ** 2) / \
            self.camera.fp_radius ** 2
        return v["fwhm"] * (1.0 + self.psf["variation"] * rho2)

    # --- objects -------------------------------------------------------------------------
    def object_positions(self, visit=None, epoch=None):
        """RA, Dec (deg) of all objects at a visit's epoch (or a Julian ``epoch``):
        linear proper motion from 2016.0, ``pmra`` including cos(dec)."""
        if epoch is None:
            epoch = self.visit(visit)["epoch"]
        o = self.objects
        dt = float(epoch) - np.asarray(o["epoch"], float)
        dec = np.asarray(o["dec"], float) + np.asarray(o["pmdec"]) * dt / 3.6e6
        ra = np.asarray(o["ra"], float) + np.asarray(o["pmra"]) * dt / 3.6e6 / \
            np.cos(np.radians(np.asarray(o["dec"], float)))
        return np.mod(ra, 360.0), dec

    def objects_on(self, visit, ccd, margin=0.0):
        """Indices into :attr:`objects` and true 0-based pixel positions of the objects
        inside ``(visit, ccd)`` (expanded by ``margin`` pixels)."""
        ra, dec = self.object_positions(visit)
        v = self.visit(visit)
        fx0 = self.camera.fx0[self.camera.index(ccd)]
        fy0 = self.camera.fy0[self.camera.index(ccd)]
        # cheap preselection in the tangent plane before the exact inverse map
        rc, dc = cam.focal_to_sky(fx0, fy0, self.camera.pixel_scale, self.camera.k1,
                                  v["rotation"], v["ra"], v["dec"])
        xi, eta = cam.sky_to_tangent(ra, dec, rc, dc)
        half = (0.6 * np.hypot(self.camera.nx, self.camera.ny) + margin) * \
            self.camera.pixel_scale / 3600.0
        near = np.flatnonzero((np.abs(xi) < half) & (np.abs(eta) < half))
        x, y = self.sky_to_pixel(visit, ccd, ra[near], dec[near])
        inside = ((x > -0.5 - margin) & (x < self.camera.nx - 0.5 + margin)
                  & (y > -0.5 - margin) & (y < self.camera.ny - 0.5 + margin))
        return near[inside], x[inside], y[inside]

    def true_counts(self, visit, ccd, index, x, y):
        """Total counts of objects ``index`` at pixels ``(x, y)`` of ``(visit, ccd)``."""
        filt = self.visit(visit)["filter"]
        flux = np.asarray(self.objects[f"flux_{filt}"], float)[index]
        return flux / self.calibration(visit, ccd, x, y)

    # --- persistence -------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The ``model.yaml`` content."""
        c = self.camera
        ccds = [dict(ccd=int(c.ccd[i]), name=c.ccdname(c.ccd[i]), fx0=float(c.fx0[i]),
                     fy0=float(c.fy0[i]), theta_deg=float(np.degrees(c.theta[i])),
                     qe=float(c.qe[i]), hdr_dfx=float(c.hdr_dfx[i]),
                     hdr_dfy=float(c.hdr_dfy[i]),
                     hdr_dtheta_deg=float(np.degrees(c.hdr_dtheta[i])),
                     bad_columns=[list(b) for b in (c.bad_columns or [[]] * len(c.ccd))[i]])
                for i in range(len(c.ccd))]
        return dict(
            format_version=FORMAT_VERSION, seed=int(self.seed), preset=self.preset,
            camera=dict(nx=c.nx, ny=c.ny, pixel_scale_arcsec=c.pixel_scale,
                        distortion_k1_per_deg2=c.k1, fp_radius_px=c.fp_radius,
                        ccds=ccds),
            filters={k: {kk: float(vv) for kk, vv in v.items()}
                     for k, v in self.filters.items()},
            illumination={k: float(v) for k, v in self.illumination.items()},
            psf={k: float(v) for k, v in self.psf.items()},
            detector={k: float(v) for k, v in self.detector.items()},
            visits=[_plain(self.visit_info[v]) for v in self.visits],
        )

    @classmethod
    def from_dict(cls, d: dict, objects: Table | None = None) -> "SimTruth":
        """Inverse of :meth:`to_dict`."""
        if d.get("format_version") != FORMAT_VERSION:
            raise UserError(f"simulator truth format {d.get('format_version')} is not "
                            f"{FORMAT_VERSION}; regenerate with makeDemoRepo.py")
        cd = d["camera"]
        arr = lambda k: np.array([c[k] for c in cd["ccds"]], float)  # noqa: E731
        camera = cam.Camera(
            ccd=np.array([c["ccd"] for c in cd["ccds"]], int), nx=int(cd["nx"]),
            ny=int(cd["ny"]), fx0=arr("fx0"), fy0=arr("fy0"),
            theta=np.radians(arr("theta_deg")), qe=arr("qe"), hdr_dfx=arr("hdr_dfx"),
            hdr_dfy=arr("hdr_dfy"), hdr_dtheta=np.radians(arr("hdr_dtheta_deg")),
            pixel_scale=float(cd["pixel_scale_arcsec"]),
            k1=float(cd["distortion_k1_per_deg2"]), fp_radius=float(cd["fp_radius_px"]),
            bad_columns=[c.get("bad_columns", []) for c in cd["ccds"]])
        return cls(camera=camera, filters=d["filters"], illumination=d["illumination"],
                   psf=d["psf"], visit_info={int(v["visit"]): v for v in d["visits"]},
                   objects=objects, detector=d.get("detector", {}),
                   seed=int(d.get("seed", 0)), preset=d.get("preset", ""))

    def write(self, truth_dir) -> None:
        """Write ``model.yaml`` and ``objects.fits`` into ``truth_dir`` atomically."""
        from astropy.io import fits

        truth_dir = Path(truth_dir)
        write_text_atomic(truth_dir / "model.yaml",
                          yaml.safe_dump(self.to_dict(), sort_keys=False))
        hdu = fits.BinTableHDU(self.objects, name="OBJECTS")
        write_fits_atomic(truth_dir / "objects.fits", fits.HDUList([fits.PrimaryHDU(), hdu]))


def _plain(v: dict) -> dict:
    """A visit dict with numpy scalars turned into Python ones (for YAML)."""
    out = {}
    for k, val in v.items():
        if isinstance(val, dict):
            out[k] = _plain(val)
        elif isinstance(val, (np.floating, float)):
            out[k] = float(val)
        elif isinstance(val, (np.integer, int)) and not isinstance(val, bool):
            out[k] = int(val)
        else:
            out[k] = val
    return out


def load_truth(sim_dir) -> SimTruth:
    """Read the truth written by the simulator.

    Parameters
    ----------
    sim_dir : str or Path
        ``ROOT/sim`` (or its ``truth`` subdirectory, or a repository ROOT).
    """
    p = Path(sim_dir)
    for cand in (p, p / "truth", p / "sim" / "truth"):
        if (cand / "model.yaml").exists():
            p = cand
            break
    else:
        raise UserError(f"{sim_dir}: no simulator truth (truth/model.yaml) found; make it "
                        "with makeDemoRepo.py ROOT")
    d = yaml.safe_load((p / "model.yaml").read_text())
    objects = None
    if (p / "objects.fits").exists():
        objects = Table.read(p / "objects.fits", hdu="OBJECTS")
        objects.convert_bytestring_to_unicode()  # "type" compares with str
    return SimTruth.from_dict(d, objects)


def calib0_for_zero_point(zp: float) -> float:
    """nJy per count of the nominal zero point ``zp`` (AB mag of 1 count)."""
    return AB_FLUX_NJY * 10 ** (-0.4 * zp)
