"""``detectSources.py ROOT --rerun R --id ... [-j N]``: per-CCD SRC catalogs.

For every CCD: sky background (sep mesh) subtracted, detection above a threshold in
units of the variance plane with deblending, windowed centroids with errors, aperture
fluxes at several radii, a Gaussian matched-filter PSF-like flux with an aperture
correction to total flux from the CCD's curve of growth (:mod:`.growth`), sizes and shapes, a star/galaxy indicator, mask flags
and header-WCS sky coordinates. Writes ``SRC-<visit>-<ccd>.fits`` (docs/interfaces.md)
and the per-CCD summary into the registry.
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import sep
from astropy.wcs.utils import proj_plane_pixel_scales
from pydantic import Field

from ..cli import CmdLineTask, TaskConfig
from ..errors import DataQualityError, UserError
from ..image.exposure import Exposure
from ..repo.exposure_io import load_exposure
from .background import estimate_background, source_mask
from .catalog import FLAG_BITS, aperture_column, build_table, source_ids, write_src
from .chunks import row_slices
from .classify import StellarLocus, is_star, stellar_locus
from .detect import SEP_BLENDED, detect_sources
from .growth import GrowthCurve, fit_growth_curve
from .interpolate import interpolate_bad_runs
from .measure import FWHM_PER_SIGMA, aperture_fluxes, gaussian_psf_flux, mask_flags
from .window import measure_windows


class DetectSourcesConfig(TaskConfig):
    """Configuration of detectSources.py."""

    threshold: float = Field(5.0, gt=0, description="detection threshold in sigma of "
                             "the per-pixel noise from the variance plane")
    min_area: int = Field(5, ge=1, description="minimum connected pixels of a detection")
    deblend_nthresh: int = Field(32, ge=1, description="deblending sub-thresholds "
                                 "(SExtractor DEBLEND_NTHRESH)")
    deblend_cont: float = Field(0.005, ge=0, le=1, description="minimum contrast of a "
                                "deblended component (SExtractor DEBLEND_MINCONT)")
    filter_type: Literal["conv", "matched"] = Field("conv", description="detection "
                                                    "filter: conv (SExtractor) or matched "
                                                    "(noise-weighted; more faint sources, "
                                                    "slower)")
    clean: bool = Field(True, description="remove spurious detections next to bright "
                        "sources")
    background_box: int = Field(64, ge=4, description="sky mesh box size (pixels)")
    background_filter: int = Field(3, ge=1, description="median filter of the sky mesh "
                                   "(boxes)")
    background_mask_scale: float | None = Field(4.0, description="second sky pass with "
                                                "the first pass's detections masked out "
                                                "to this many isophotal a, b (None: one "
                                                "pass)")
    background_bin: int = Field(4, ge=1, description="the sky passes are fitted on the "
                                "image binned this many pixels square (block means), "
                                "the mesh unchanged in pixels, and the sky interpolated "
                                "bilinearly between block centres: a sixth of the cost, "
                                "no less accurate on the simulator's truth sky (1: full "
                                "resolution)")
    aperture_radii: list[float] = Field([3.0, 6.0, 9.0, 12.0], min_length=1,
                                        description="aperture radii in pixels "
                                        "(columns flux_ap_<r>)")
    bad_planes: list[str] = Field(["BAD", "NO_DATA"], description="mask planes "
                                  "whose pixels are interpolated (short runs, see "
                                  "interpolate_max_run) or else excluded from "
                                  "background, detection and measurement")
    interpolate_max_run: int = Field(16, ge=0, description="runs of at most this many "
                                     "bad pixels along a row (bad columns, NaN or "
                                     "zero-weight pixels) are interpolated linearly from "
                                     "the good pixels either side before detection and "
                                     "measurement, as SExtractor's INTERP_MAXXLAG; longer "
                                     "runs stay excluded; sources near them are still "
                                     "flagged (0: none)")
    flag_radius_fwhm: float = Field(1.0, gt=0, description="mask planes within this "
                                    "many PSF FWHMs of a source set its flags")
    min_locus_stars: int = Field(3, ge=1, description="fewer stars on the size locus: "
                                 "the PSF FWHM comes from the header seeing (PSFFWHM) "
                                 "when known")
    star_snr: float = Field(20.0, gt=0, description="minimum S/N of the stars that "
                            "define the stellar locus and aperture correction")
    locus_width: float = Field(0.15, gt=0, description="fractional half-width of the "
                               "stellar size locus")
    star_tolerance: float = Field(0.05, ge=0, description="allowed |flux_psf/flux_ap_max"
                                  " - 1| of a star, added to nsigma times its error")
    star_nsigma: float = Field(3.0, ge=0, description="error multiple in the star test")
    star_min_size: float = Field(0.7, ge=0, description="a star's FWHM exceeds this "
                                 "fraction of the PSF FWHM (cosmic rays are sharper)")
    growth_outer_fwhm: float = Field(3.0, gt=0, description="outer radius of the "
                                     "growth curves, in PSF FWHMs (at least 1.25 x the "
                                     "largest aperture, capped by growth_max_radius and "
                                     "the CCD size)")
    growth_max_radius: float = Field(40.0, gt=0, description="largest growth-curve "
                                     "aperture radius (pixels)")
    growth_min_stars: int = Field(5, ge=1, description="fewer isolated bright stars: "
                                  "the aperture correction to total flux falls back to a "
                                  "Moffat of fallback_beta (header GROWMETH=fallback)")
    growth_isolation_ratio: float = Field(0.01, gt=0, description="a growth star has no "
                                          "detection brighter than this fraction of it "
                                          "within its sky annulus")
    growth_max_error: float = Field(0.02, gt=0, description="growth stars have a "
                                    "sky-noise error of their outer-aperture flux below "
                                    "this fraction")
    growth_core_fwhm: float = Field(1.0, gt=0, description="radius (PSF FWHMs) of the "
                                    "core aperture that puts the Gaussian PSF flux on "
                                    "the growth curve's scale, on all isolated locus "
                                    "stars (least sky noise)")
    growth_min_gradient_stars: int = Field(10, ge=3, description="fewer core-aperture "
                                           "stars: the aperture correction is constant "
                                           "over the CCD (no APCDX/APCDY gradient)")
    fallback_beta: float | None = Field(3.0, description="Moffat beta assumed for the "
                                        "correction beyond the largest aperture when the "
                                        "growth curve cannot be fitted (None: none)")
    default_fwhm: float = Field(4.0, gt=0, description="PSF FWHM (pixels) used when a "
                                "CCD has no star for the locus")
    use_gain: bool = Field(True, description="add source Poisson noise to the errors "
                           "when the CCD's gain is known")
    threads: int = Field(2, ge=1, description="threads per CCD: the per-source "
                         "measurements are split over them and the second sky pass runs "
                         "beside the growth-curve masks (sep and numpy release the GIL); "
                         "results do not depend on it")


@dataclass
class SourceMeasurement:
    """The measured catalog of one CCD and its summary."""

    table: object  # astropy Table in SRC format
    psf_fwhm_pix: float
    psf_fwhm_arcsec: float
    sky_level: float
    sky_noise: float
    apcorr: float     # Gaussian matched filter -> total flux (what flux_psf holds)
    n_apcorr: int
    growth: GrowthCurve
    n_locus: int      # stars on the size locus (PSF FWHM reliable from ~3)
    psf_source: str   # locus | prior (header seeing) | default (config)
    n_sources: int
    n_stars: int


def _pixel_scale_arcsec(wcs) -> float:
    if wcs is None:
        return float("nan")
    return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)


def measure_exposure(exp: Exposure, config: DetectSourcesConfig,
                     label: str = "CCD", overwrite: bool = False) -> SourceMeasurement:
    """Detect and measure the sources of one Exposure.

    Parameters
    ----------
    exp : Exposure
    config : DetectSourcesConfig
    label : str
        Names the CCD in error messages (``visit=... ccd=...``).
    overwrite : bool
        The image and variance planes may be changed in place (bad pixels interpolated
        or zeroed) instead of copied: for a caller that read the Exposure only for this
        (two CCD-sized copies fewer).

    Raises
    ------
    DataQualityError
        No usable pixel, or no source detected.
    """
    planes = _prepare_planes(exp, config, label, overwrite)
    with ThreadPoolExecutor(max_workers=config.threads) as pool:
        return _measure(exp, planes, config, label, pool)


def _split(pool, threads: int, n: int, func, *arrays):
    """``func(*arrays)`` over contiguous chunks of sources, one per worker thread;
    the chunks' outputs (tuples of arrays) are concatenated in order. Each source's
    result depends only on its own inputs, so the split does not change them."""
    k = min(threads, max(1, n // 256))  # tiny CCDs: one chunk
    if k <= 1:
        return func(*arrays)
    edges = np.linspace(0, n, k + 1).astype(int)
    futures = [pool.submit(func, *(a[lo:hi] for a in arrays))
               for lo, hi in zip(edges[:-1], edges[1:])]
    parts = [f.result() for f in futures]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(parts[0])))


def _measure(exp, planes, config, label, pool) -> SourceMeasurement:
    """:func:`measure_exposure` after the pixel planes are prepared."""
    data, bkg, objs, segmap, masks = _sky_and_detect(planes, config, label, pool, exp)
    var, bad8, mp = planes.var, planes.bad.view(np.uint8), exp.mask_planes
    gain = exp.info.gain if (config.use_gain and exp.info.gain) else None
    radii = list(config.aperture_radii)
    x0 = np.asarray(objs["x"], float)
    y0 = np.asarray(objs["y"], float)
    blended = (np.asarray(objs["flag"]) & SEP_BLENDED) != 0
    sig0 = np.sqrt(np.asarray(objs["a"], float) * np.asarray(objs["b"], float))

    ids = np.arange(1, len(x0) + 1)  # sep's segmentation ids
    bad_px = bad8 if planes.any_bad else None  # sep skips the mask reads without one

    def per_source(x0, y0, sig0, blended, ids):
        # windowed centroid and adaptive (core-matched) window sigma in one iteration,
        # other detections' pixels left out of each window; sqrt(ab) where the moments
        # fail
        win = measure_windows(data, var, bad_px, x0, y0, sig0, segmap=segmap, ids=ids,
                              gain=gain, blended=blended)
        sig = np.where(np.isfinite(win.sigma), win.sigma, np.clip(sig0, 0.5, None))
        aps = aperture_fluxes(data, var, bad_px, win.x, win.y, radii, gain)
        return (sig, win.x, win.y, win.x_err, win.y_err,
                *(v for r in radii for v in aps[r][:2]))

    out = _split(pool, config.threads, len(x0), per_source, x0, y0, sig0, blended,
                 ids)
    sig, x, y, x_err, y_err = out[:5]
    aps = {r: (out[5 + 2 * i], out[6 + 2 * i], None) for i, r in enumerate(radii)}
    fwhm = FWHM_PER_SIGMA * sig
    f_max, e_max, _ = aps[max(radii)]

    locus, psf_source, n_locus = _psf_locus(exp, config, planes.satmask, x, y, fwhm,
                                            aps, radii, blended)
    psf_fwhm = locus.fwhm if np.isfinite(locus.fwhm) else config.default_fwhm
    g_flux, g_err = _split(pool, config.threads, len(x), lambda x, y: gaussian_psf_flux(
        data, var, bad8, x, y, psf_fwhm, gain), x, y)
    growth = _growth_curve(data, planes, config, x, y, locus.members, f_max, e_max,
                           g_flux, psf_fwhm, max(radii), sig, masks, gain, fwhm)
    apcorr, n_ap = growth.apcorr, growth.n_ref
    # flux_psf and its error: one multiplicative correction per source (it varies
    # smoothly over the CCD with the PSF size), so S/N is unchanged
    corr = growth.apcorr_at(x, y)
    flux_psf = g_flux * corr
    flux_psf_err = g_err * corr
    # the star test compares like with like: the PSF flux on the largest aperture's scale
    flux_psf_ap = flux_psf / growth.apcorr_inf
    with np.errstate(divide="ignore", invalid="ignore"):
        elong = np.asarray(objs["a"], float) / np.asarray(objs["b"], float)
    locus_elong = float(np.median(elong[locus.members])) if locus.members.any() else None
    star, _ = is_star(flux_psf_ap, flux_psf_err / growth.apcorr_inf, f_max, e_max,
                      config.star_tolerance,
                      config.star_nsigma, fwhm, psf_fwhm, config.star_min_size, elong,
                      locus_elong)
    flags = _flags(planes.satmask, mp, x, y, config.flag_radius_fwhm * psf_fwhm, blended)

    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux_psf / flux_psf_err
        mag = np.where(flux_psf > 0, -2.5 * np.log10(flux_psf), np.nan)
    if exp.wcs is not None:
        ra, dec = exp.wcs.pixel_to_world_values(x, y)
    else:
        ra = dec = np.full(len(x), np.nan)
    cols = {"id": source_ids(exp.info.visit or 0, exp.info.ccd or 0, len(x)),
            "x": x, "y": y, "x_err": x_err, "y_err": y_err, "ra": ra, "dec": dec,
            "flux_psf": flux_psf, "flux_psf_err": flux_psf_err, "mag_inst": mag,
            "a": objs["a"], "b": objs["b"], "theta": objs["theta"], "fwhm": fwhm,
            "snr": snr, "is_star": star, "flags": flags}
    for r in radii:
        cols[aperture_column(r)] = aps[r][0]
        cols[aperture_column(r) + "_err"] = aps[r][1]
    for name in ("saturated", "edge", "bad", "cr", "blended"):
        cols[f"flag_{name}"] = (flags & FLAG_BITS[name]) != 0
    table = build_table(cols, radii)
    return SourceMeasurement(table=table, psf_fwhm_pix=float(psf_fwhm),
                             psf_fwhm_arcsec=float(locus.fwhm
                                                   * _pixel_scale_arcsec(exp.wcs)),
                             sky_level=bkg.global_level, sky_noise=bkg.global_rms,
                             apcorr=apcorr, n_apcorr=n_ap, growth=growth,
                             n_locus=n_locus,
                             psf_source=psf_source, n_sources=len(table),
                             n_stars=int(np.count_nonzero(star)))


@dataclass
class _Planes:
    """Pixel planes ready for sep: short runs of bad pixels interpolated, the other bad
    pixels zeroed, variance finite."""

    image: np.ndarray
    var: np.ndarray
    bad: np.ndarray       # bool: excluded from sky, detection and measurement
    any_bad: bool
    satmask: np.ndarray   # the mask with pixels above SATURATE added to SAT


def _prepare_planes(exp: Exposure, config: DetectSourcesConfig, label: str,
                    overwrite: bool = False) -> _Planes:
    mp = exp.mask_planes
    image = np.asarray(exp.image, dtype=np.float32)
    var = np.asarray(exp.variance, dtype=np.float32)
    bits = mp.bitmask(*config.bad_planes)
    bad = np.empty(image.shape, bool)
    for rows in row_slices(image.shape[0]):
        b = (exp.mask[rows] & bits) != 0
        b |= ~np.isfinite(image[rows])
        b |= ~(var[rows] > 0)  # NaN compares False; +inf is caught below
        b |= np.isinf(var[rows])
        bad[rows] = b
    if bad.all():
        raise DataQualityError(f"{label}: no usable pixels (all masked, NaN or zero "
                               "weight); the CCD is left out")
    # pixels above the CCD's saturation level are saturated even if unmasked
    satmask = exp.mask
    if exp.info.saturation:
        over = image >= exp.info.saturation  # NaN compares False
        if over.any():
            satmask = exp.mask.copy()
            satmask[over] |= mp.bitmask("SAT")
    if bad.any():  # copies only when needed (full CCDs are large; the caller's arrays)
        image, var = (_writable(a, overwrite) for a in (image, var))
        bad = interpolate_bad_runs([image, var], bad, config.interpolate_max_run)
    any_bad = bool(bad.any())
    if any_bad:
        image[bad] = 0
        # bad pixels get a typical variance so sums stay finite (they are masked anyway)
        sample = var.reshape(-1)[::97][~bad.reshape(-1)[::97]]
        var[bad] = np.median(sample) if sample.size else 1.0
    return _Planes(image, var, bad, any_bad, satmask)


def _writable(a, overwrite):
    """``a`` itself when it may be overwritten and is a C-contiguous writeable float32
    array, else a copy of that kind."""
    if overwrite and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.array(a, dtype=np.float32, order="C")


def _sky_and_detect(planes: _Planes, config: DetectSourcesConfig, label: str, pool,
                    exp: Exposure):
    """Sky-subtracted image, the sky model, sep's detections, segmentation map, and
    the growth curve's pixel masks (:class:`_GrowthMasks`, built while the second sky
    pass runs in another thread)."""
    image, bad = planes.image, planes.bad
    two_pass = config.background_mask_scale is not None
    bkg = estimate_background(image, bad, config.background_box, config.background_filter,
                              bin_factor=config.background_bin)
    data = bkg.subtract(image, bad if planes.any_bad else None)
    objs, segmap = detect_sources(data, planes.var,
                                  bad.view(np.uint8) if planes.any_bad else None,
                                  config.threshold,
                                  config.min_area, config.deblend_nthresh,
                                  config.deblend_cont, config.clean,
                                  filter_type=config.filter_type)
    if len(objs) == 0:
        raise DataQualityError(f"{label}: no sources detected above {config.threshold} "
                               "sigma; the CCD is left out (check the image, or lower "
                               "--config threshold=...)")
    second = None
    if two_pass:
        # second sky pass without the sources' wings; detections are kept (the
        # difference is a small fraction of the noise), measurements use the new sky
        def sky2():
            bkg2 = estimate_background(image, source_mask(segmap, objs, bad,
                                                          config.background_mask_scale),
                                       config.background_box, config.background_filter,
                                       bin_factor=config.background_bin)
            if not bkg2.global_rms > 0:  # sep gives 0 when every mesh was too masked:
                return None              # the first pass's sky stays
            # into the first pass's buffer: the detections no longer need it
            return bkg2, bkg2.subtract(image, bad if planes.any_bad else None, out=data)
        second = pool.submit(sky2)
    masks = _growth_masks(planes, exp.mask_planes, objs, segmap)
    if second is not None and (res := second.result()) is not None:
        bkg, data = res
    return data, bkg, objs, segmap, masks


@dataclass
class _GrowthMasks:
    """Pixels the growth curve avoids: ``reject`` in its apertures (masked, saturated,
    interpolated, cosmic rays), ``sky_reject`` in its sky annuli (also every
    detection's footprint and core ellipse), and the typical per-pixel noise."""

    reject: np.ndarray
    sky_reject: np.ndarray
    sky_sigma: float


def _growth_masks(planes: _Planes, mp, objs, segmap) -> _GrowthMasks:
    bits = mp.bitmask("SAT", "CR", "BAD", "INTRP", "SUSPECT", "NO_DATA")
    reject = np.empty(planes.bad.shape, bool)
    for rows in row_slices(reject.shape[0]):
        np.logical_or(planes.bad[rows], (planes.satmask[rows] & bits) != 0,
                      out=reject[rows])
    # local sky annuli leave out every detection's footprint and core ellipse
    # (5 isophotal a, b: a galaxy's wings reach far), so neighbours do not bias it
    others = segmap > 0
    sep.mask_ellipse(others, objs["x"], objs["y"], objs["a"], objs["b"], objs["theta"],
                     r=5.0)
    others |= reject
    # the median variance from every 61st pixel: the plane is smooth
    sky_sigma = float(np.sqrt(np.median(planes.var.reshape(-1)[::61])))
    return _GrowthMasks(reject, others, sky_sigma)


def _growth_curve(data, planes, config, x, y, stars, f_max, e_max, g_flux,
                  psf_fwhm, r_ref, size, masks: _GrowthMasks, gain, fwhm) -> GrowthCurve:
    """The CCD's curve of growth on its isolated bright stars (:mod:`.growth`)."""
    bright = stars & (f_max > 0)
    return fit_growth_curve(data, planes.var, masks.reject, x, y, bright, f_max, e_max,
                            g_flux, psf_fwhm, r_ref, size=size,
                            sky_reject=masks.sky_reject, sky_sigma=masks.sky_sigma,
                            max_error=config.growth_max_error, gain=gain,
                            core_fwhm=config.growth_core_fwhm, fwhm_star=fwhm,
                            min_gradient_stars=config.growth_min_gradient_stars,
                            outer_fwhm=config.growth_outer_fwhm,
                            max_radius=config.growth_max_radius,
                            min_stars=config.growth_min_stars,
                            isolation_ratio=config.growth_isolation_ratio,
                            fallback_beta=config.fallback_beta)


def _psf_locus(exp, config, satmask, x, y, fwhm, aps, radii, blended):
    """The stellar locus (PSF FWHM, member stars), where it came from, its size."""
    f_mid, e_mid, _ = aps[radii[min(1, len(radii) - 1)]]
    with np.errstate(divide="ignore", invalid="ignore"):
        snr_mid = f_mid / e_mid
    # provisional flags at the median size, for choosing locus stars
    radius = config.flag_radius_fwhm * np.nanmedian(fwhm)
    pre = _flags(satmask, exp.mask_planes, x, y,
                 radius if np.isfinite(radius) else config.default_fwhm, blended)
    candidates = (snr_mid >= config.star_snr) & (pre == 0)
    locus = stellar_locus(fwhm, candidates, config.locus_width)
    n_locus = int(locus.members.sum())
    scale = _pixel_scale_arcsec(exp.wcs)
    prior = (exp.info.psf_fwhm / scale) if (exp.info.psf_fwhm and np.isfinite(scale)) \
        else None
    if n_locus < config.min_locus_stars and prior:
        # too few stars for a locus (small cutouts, empty fields): the header's seeing
        # defines the PSF, and the candidates of that size are the stars
        locus = StellarLocus(float(prior), candidates & np.isfinite(fwhm)
                             & (np.abs(fwhm / prior - 1) < config.locus_width))
        return locus, "prior", n_locus
    return locus, ("locus" if np.isfinite(locus.fwhm) else "default"), n_locus


def _flags(mask, mp, x, y, radius, blended) -> np.ndarray:
    """The ``flags`` bitmask from the mask planes near each source and sep's blend flag."""
    planes = {"saturated": mp.bitmask("SAT"), "edge": mp.bitmask("EDGE", "SENSOR_EDGE"),
              "bad": mp.bitmask("BAD", "INTRP", "SUSPECT"), "cr": mp.bitmask("CR"),
              "nodata": mp.bitmask("NO_DATA")}
    hit = mask_flags(mask, x, y, max(float(radius), 1.0), planes)
    bits = np.zeros(len(x), np.int32)
    for name in planes:
        bits |= np.where(hit[name], FLAG_BITS[name], 0).astype(np.int32)
    bits |= np.where(hit["off_image"], FLAG_BITS["edge"], 0).astype(np.int32)
    bits |= np.where(blended, FLAG_BITS["blended"], 0).astype(np.int32)
    return bits


def _growth_header(g: GrowthCurve) -> dict:
    """Header keywords of the aperture correction (flux_psf = Gaussian flux x APCORR;
    the old largest-aperture-scale flux is flux_psf / APCINF)."""
    def fin(v):
        return float(v) if np.isfinite(v) else None
    cards = {"APCORR": (g.apcorr, "Gaussian PSF flux -> total flux (in flux_psf)"),
            "APCREF": (g.apcorr_ref, "Gaussian PSF flux -> flux in APCRAD aperture"),
            "APCINF": (g.apcorr_inf, "flux in APCRAD aperture -> total flux"),
            "APCDX": (g.grad_x, "APCORR*exp(APCDX*(x/NX-.5)+APCDY*(y/NY-.5))"),
            "APCDY": (g.grad_y, "gradient of ln APCORR along y (see APCDX)"),
            "APCRAD": (g.r_ref, "[pix] reference aperture radius"),
            "APCORRN": (g.n_ref, "stars setting the Gaussian -> aperture scale"),
            "APCCORE": (fin(g.r_core), "[pix] core aperture radius of that scale"),
            "GROWNSTR": (g.n_stars, "stars in the fitted growth curve"),
            "GROWMETH": (g.method, "growth curve: moffat (fitted) or fallback"),
            "GROWALPH": (fin(g.alpha), "[pix] Moffat alpha of the growth curve"),
            "GROWBETA": (fin(g.beta), "Moffat beta of the growth curve"),
            "GROWROUT": (fin(g.r_out), "[pix] outer growth-curve aperture radius"),
            "GROWRMS": (fin(g.fit_rms), "RMS of the growth-curve fit (fraction)")}
    return {k: v for k, v in cards.items() if v[0] is not None}


class DetectSourcesTask(CmdLineTask):
    """Detect and measure sources on every selected CCD (one unit per CCD)."""

    name = "detectSources"
    description = ("Detect and measure sources on each CCD (sep): SRC catalogs with "
                   "windowed centroids, aperture and PSF fluxes, shapes, flags, ra/dec")
    ConfigClass = DetectSourcesConfig
    level = "ccd"

    def run_unit(self, data_id: dict):
        label = f"visit={data_id['visit']} ccd={data_id['ccd']}"
        row = self.repo.registry.exposure(data_id["visit"], data_id["ccd"])
        try:
            exp = load_exposure(self.repo, row)
        except DataQualityError:
            raise
        except UserError as exc:  # unreadable/empty file: flag this CCD, go on
            raise DataQualityError(f"{label}: {exc}") from None
        res = measure_exposure(exp, self.config, label, overwrite=True)
        info = exp.info
        header = {"VISIT": int(info.visit), "CCD": int(info.ccd),
                  "FILTER": info.filter, "MJD-OBS": info.mjd,
                  "TIMESYS": info.timesys, "EXPTIME": info.exptime,
                  "NX": int(exp.shape[1]), "NY": int(exp.shape[0]),
                  "PSFFWHM": res.psf_fwhm_arcsec, "PSFFWPIX": res.psf_fwhm_pix,
                  "SKYLEVEL": res.sky_level, "SKYNOISE": res.sky_noise,
                  **_growth_header(res.growth),
                  "PSFNSTAR": res.n_locus, "PSFSRC": res.psf_source,
                  "NSOURCES": res.n_sources, "NSTARS": res.n_stars,
                  "CCDNAME": info.ccdname, "INSTRUME": info.instrument,
                  "GAIN": info.gain, "SATURATE": info.saturation,
                  **self.provenance()}
        path = self.repo.path("src", visit=data_id["visit"], ccd=data_id["ccd"],
                              pointing=row.get("pointing") or 0, filter=row["filter"])
        write_src(path, res.table, header, exp.wcs)
        fwhm = res.psf_fwhm_arcsec if np.isfinite(res.psf_fwhm_arcsec) else None
        self.repo.registry.put_ccd_summary(
            self.repo.rerun, int(data_id["visit"]), int(data_id["ccd"]), psf_fwhm=fwhm,
            sky_level=res.sky_level, sky_noise=res.sky_noise, n_sources=res.n_sources,
            n_stars=res.n_stars)
        return {"n_sources": res.n_sources, "n_stars": res.n_stars, "psf_fwhm": fwhm}


def main():
    """Console-script entry point."""
    sys.exit(DetectSourcesTask.main())
