"""The observing plan: fields, dithered visits, conditions and header errors → SimTruth."""
from __future__ import annotations

import numpy as np

from . import camera as cam
from .config import SimConfig
from .sky import make_objects
from .truth import SimTruth, calib0_for_zero_point, mjd_to_epoch


def seeded(seed: int, *keys: int) -> np.random.Generator:
    """A generator for one purpose: the same (seed, keys) always gives the same draws."""
    return np.random.default_rng([int(seed), *map(int, keys)])


def make_visits(config: SimConfig, camera: cam.Camera, seed: int, n_fields: int,
                visits_per_field: int) -> dict:
    """One dict per visit: pointing, rotator angle, time, seeing, transparency, sky,
    header errors and (for the second visit, when enabled) a satellite trail."""
    rng = seeded(seed, 2)
    cosd = np.cos(np.radians(config.dec))
    out = {}
    k = 0
    for fi, filt in enumerate(config.filters):
        for field in range(n_fields):
            fra = config.ra + field * config.field_step_arcsec / 3600.0 / cosd
            for _ in range(visits_per_field):
                visit = config.first_visit + 2 * k
                d = config.dither_arcsec / 3600.0
                ra = fra + rng.uniform(-d, d) / cosd
                dec = config.dec + rng.uniform(-d, d)
                rotation = rng.uniform(-config.rotation_range_deg,
                                       config.rotation_range_deg)
                # a few visits a night, nights a few days apart
                mjd = config.mjd_start + 3.0 * (k // 3) + 0.01 * (k % 3) + 0.37 * fi
                pe = config.pointing_error_arcsec / 3600.0
                zp = config.zero_point[filt]
                sky_adu = 10 ** (-0.4 * (config.sky_mag[filt] - zp)) * \
                    config.pixel_scale ** 2 * rng.uniform(0.85, 1.15)
                out[visit] = dict(
                    visit=int(visit), filter=filt, field=f"SIMFIELD{field + 1}",
                    pointing=int(config.first_pointing + field),
                    ra=float(np.mod(ra, 360)), dec=float(dec), rotation=float(rotation),
                    mjd=float(mjd), epoch=float(mjd_to_epoch(mjd)),
                    fwhm=float(rng.uniform(*config.seeing_range)),
                    transparency=float(1.0 + rng.uniform(-config.transparency_range,
                                                         config.transparency_range)),
                    sky_level=float(sky_adu),
                    sky_gradient=float(config.sky_gradient * rng.uniform(0.5, 1.0)),
                    sky_gradient_angle=float(rng.uniform(0, 360)),
                    hdr_ra=float(np.mod(ra + rng.uniform(-pe, pe) / cosd, 360)),
                    hdr_dec=float(dec + rng.uniform(-pe, pe)),
                    hdr_rotation=float(rotation + rng.uniform(-config.rotation_error_deg,
                                                              config.rotation_error_deg)),
                    trail=None,
                )
                k += 1
    if config.satellite_trail and len(out) > 1:
        v = sorted(out)[1]
        trng = seeded(seed, 3)
        out[v]["trail"] = dict(
            fx=float(trng.uniform(-0.2, 0.2) * camera.fp_radius),
            fy=float(trng.uniform(-0.2, 0.2) * camera.fp_radius),
            angle_deg=float(trng.uniform(20, 70)), sigma_px=1.5,
            peak_adu=float(15.0 * np.sqrt(out[v]["sky_level"] / config.gain) + 100.0))
    return out


def build_truth(config: SimConfig, seed: int, preset: str = "",
                catalog_only: bool = False) -> SimTruth:
    """The whole true model of a survey (camera, visits, objects) for ``seed``."""
    if catalog_only:
        nx, ny, n_ccds = cam.HSC_NX, cam.HSC_NY, config.catalog_n_ccds
        n_fields, vpf = 1, config.catalog_visits_per_field
        dist = (config.catalog_distortion_arcsec, config.catalog_distortion_radius_deg)
    else:
        nx, ny, n_ccds = config.ccd_nx, config.ccd_ny, config.n_ccds
        n_fields, vpf = config.n_fields, config.visits_per_field
        dist = (config.distortion_arcsec, config.distortion_radius_deg)
    camera = cam.make_camera(n_ccds, nx, ny, config.ccd_gap_x, config.ccd_gap_y,
                             config.pixel_scale, config.ccd_rotation_rms_deg,
                             config.qe_scatter, config.ccd_placement_error_px, *dist,
                             seeded(seed, 1), config.bad_column_fraction)
    visits = make_visits(config, camera, seed, n_fields, vpf)
    filters = {f: dict(zero_point=config.zero_point[f],
                       calib0=calib0_for_zero_point(config.zero_point[f]))
               for f in config.filters}
    truth = SimTruth(
        camera=camera, filters=filters,
        illumination=dict(a=config.illumination_quadratic, b=config.illumination_linear),
        psf=dict(beta=config.psf_beta, variation=config.psf_variation),
        visit_info=visits, seed=seed, preset=preset,
        detector=dict(gain=config.gain, read_noise=config.read_noise,
                      saturation=config.saturation, exptime=config.exptime))
    # objects over a square covering every visit's focal plane
    ras = np.array([v["ra"] for v in visits.values()])
    decs = np.array([v["dec"] for v in visits.values()])
    ra0 = float(np.degrees(np.arctan2(np.sin(np.radians(ras)).mean(),
                                      np.cos(np.radians(ras)).mean())) % 360)
    dec0 = float(decs.mean())
    xi, eta = cam.sky_to_tangent(ras, decs, ra0, dec0)
    r_deg = camera.fp_radius * camera.pixel_scale / 3600.0
    fp_deg = r_deg * (1.0 + abs(camera.k1) * r_deg ** 2)
    half = float(max(np.abs(xi).max(), np.abs(eta).max()) + fp_deg * 1.02 + 20 / 3600.0)
    truth.objects = make_objects(config, seeded(seed, 0), ra0, dec0, half)
    return truth
