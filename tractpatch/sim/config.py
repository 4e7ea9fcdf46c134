"""Configuration of the survey simulator and its presets (tiny, mini, hsc).

:class:`SimConfig` holds every knob with its default (the defaults are the ``mini``
preset, the one ``make demo`` uses); :data:`PRESETS` lists what ``tiny`` and ``hsc``
change. ``--config NAME=VALUE`` overrides any field on top of the preset.
"""
from __future__ import annotations

from pydantic import Field

from ..cli.config import TaskConfig
from ..errors import UserError


class SimConfig(TaskConfig):
    """Parameters of one simulated survey (see docs/simulator.md for the model)."""

    # --- camera ---------------------------------------------------------------------
    n_ccds: int = Field(8, ge=1, le=104, description="number of CCDs, the ones nearest "
                        "the optical axis of the HSC-like layout (104 = the full camera)")
    ccd_nx: int = Field(512, ge=32, description="CCD width in pixels (HSC: 2048)")
    ccd_ny: int = Field(1044, ge=32, description="CCD height in pixels (HSC: 4176)")
    ccd_gap_x: int = Field(70, ge=0, description="gap between CCD columns (pixels)")
    ccd_gap_y: int = Field(120, ge=0, description="gap between CCD rows (pixels)")
    pixel_scale: float = Field(0.168, gt=0, description="pixel scale (arcsec/pixel)")
    ccd_rotation_rms_deg: float = Field(0.02, ge=0, description="rms of the true "
                                        "per-CCD rotations in the focal plane (deg)")
    distortion_arcsec: float = Field(1.0, description="radial optical distortion: "
                                     "displacement (arcsec) at distortion_radius_deg "
                                     "(HSC: ~10 at 0.75 deg)")
    distortion_radius_deg: float = Field(0.07, gt=0, description="field angle (deg) at "
                                         "which the distortion is distortion_arcsec")
    # --- observing ------------------------------------------------------------------
    ra: float = Field(150.0, description="RA of the first field (deg)")
    dec: float = Field(2.2, description="Dec of the first field (deg)")
    filters: list[str] = Field(["HSC-R", "HSC-I"], description="filters observed "
                               "(HSC-R and/or HSC-I)")
    n_fields: int = Field(2, ge=1, description="number of neighbouring fields (pointings)")
    field_step_arcsec: float = Field(180.0, ge=0, description="separation of "
                                     "neighbouring fields along RA (arcsec)")
    visits_per_field: int = Field(2, ge=1, description="dithered visits per field and "
                                  "filter")
    dither_arcsec: float = Field(40.0, ge=0, description="maximum dither offset per axis "
                                 "(arcsec)")
    rotation_range_deg: float = Field(4.0, ge=0, description="visit rotator angles are "
                                      "uniform in +-this (deg)")
    first_visit: int = Field(1000, ge=0, description="first visit number (visits are "
                             "even numbers from here, as HSC's)")
    first_pointing: int = Field(1001, ge=0, description="pointing number of the first "
                                "field")
    mjd_start: float = Field(58800.4, description="MJD (UTC) of the first visit (epoch "
                             "~2019.9, so proper motions since 2016.0 matter)")
    exptime: float = Field(300.0, gt=0, description="exposure time (s)")
    seeing_range: list[float] = Field([0.5, 1.2], description="per-visit PSF FWHM "
                                      "range (arcsec)")
    psf_beta: float = Field(3.0, gt=1.5, description="Moffat beta")
    psf_variation: float = Field(0.06, ge=0, description="fractional FWHM increase at "
                                 "the focal-plane edge (quadratic in radius)")
    # --- detector and sky ---------------------------------------------------------
    gain: float = Field(3.0, gt=0, description="gain (e-/ADU)")
    read_noise: float = Field(4.5, ge=0, description="read noise (e-)")
    saturation: float = Field(45000.0, gt=0, description="saturation level (ADU)")
    zero_point: dict[str, float] = Field({"HSC-R": 32.2, "HSC-I": 32.0},
                                         description="nominal AB magnitude of a source "
                                         "giving 1 ADU in one exposure, per filter")
    sky_mag: dict[str, float] = Field({"HSC-R": 20.8, "HSC-I": 20.1},
                                      description="sky brightness (AB mag/arcsec^2)")
    sky_gradient: float = Field(0.03, ge=0, description="fractional sky gradient across "
                                "the focal plane")
    qe_scatter: float = Field(0.03, ge=0, description="rms of the per-CCD QE "
                              "calibration factors")
    transparency_range: float = Field(0.10, ge=0, description="per-visit transparency "
                                      "factors are uniform in 1 +- this")
    illumination_quadratic: float = Field(0.04, description="focal-plane illumination "
                                          "term a in 1 + a rho^2 + b rho_x")
    illumination_linear: float = Field(0.015, description="focal-plane illumination "
                                       "term b in 1 + a rho^2 + b rho_x")
    bad_column_fraction: float = Field(0.5, ge=0, le=1, description="fraction of CCDs "
                                       "with bad columns (1-2 each)")
    cosmic_ray_rate: float = Field(60.0, ge=0, description="cosmic rays per "
                                   "megapixel per exposure")
    satellite_trail: bool = Field(True, description="draw one satellite trail across the "
                                  "second visit")
    # --- header WCS errors ------------------------------------------------------------
    pointing_error_arcsec: float = Field(4.0, ge=0, description="header pointing error "
                                         "(uniform in +-this per axis, arcsec)")
    rotation_error_deg: float = Field(0.05, ge=0, description="header rotator-angle "
                                      "error (uniform in +-this, deg)")
    ccd_placement_error_px: float = Field(1.5, ge=0, description="header CCD placement "
                                          "error (uniform in +-this per axis, pixels)")
    # --- sky objects --------------------------------------------------------------
    star_density: float = Field(160000.0, ge=0, description="stars per deg^2 over "
                                "star_mag_range (default: a rich field, half of the "
                                "stars in 17 < i < 22, ~80 with S/N > 50 per mini CCD; "
                                "high Galactic latitude: ~5000 over 15-24.5, slope 0.2)")
    star_mag_range: list[float] = Field([16.0, 24.0], description="PS1 i-band range of "
                                        "the stars")
    star_count_slope: float = Field(0.1, description="d log10 N / dm of the star counts")
    galaxy_density: float = Field(150000.0, ge=0, description="galaxies per deg^2 over "
                                  "galaxy_mag_range")
    galaxy_mag_range: list[float] = Field([18.0, 25.5], description="HSC-I range of the "
                                          "galaxies")
    galaxy_count_slope: float = Field(0.33, description="d log10 N / dm of the galaxy "
                                      "counts")
    refcat_mag_limit: float = Field(21.0, description="stars with PS1 r brighter than "
                                    "this enter the reference catalog (Gaia-like depth)")
    # --- catalog-only mode ------------------------------------------------------------
    catalog_n_ccds: int = Field(104, ge=1, le=104, description="catalog-only: CCDs "
                                "(full 2048x4176 HSC layout)")
    catalog_distortion_arcsec: float = Field(10.0, description="catalog-only: radial "
                                             "distortion (arcsec) at "
                                             "catalog_distortion_radius_deg (HSC-like; the "
                                             "pixel presets' distortion is scaled for their "
                                             "small focal planes and would reach arcminutes "
                                             "at the edge of the full camera)")
    catalog_distortion_radius_deg: float = Field(0.75, gt=0, description="catalog-only: "
                                                 "field angle (deg) of "
                                                 "catalog_distortion_arcsec")
    catalog_visits_per_field: int = Field(15, ge=1, description="catalog-only: visits "
                                          "per filter (one field)")
    catalog_mag_limit: float = Field(24.0, description="catalog-only: faintest HSC "
                                     "magnitude listed (S/N > 5 is also required)")
    catalog_apertures: list[int] = Field([6, 12], description="catalog-only: aperture "
                                         "radii (pixels) of the flux_ap_<r> columns")


#: What each preset changes from the defaults (the defaults are ``mini``).
PRESETS: dict[str, dict] = {
    "tiny": dict(n_ccds=4, ccd_nx=256, ccd_ny=512, n_fields=2, field_step_arcsec=45.0,
                 visits_per_field=2, dither_arcsec=10.0, rotation_range_deg=3.0,
                 distortion_arcsec=0.3, distortion_radius_deg=0.03,
                 cosmic_ray_rate=80.0, bad_column_fraction=0.75),
    "mini": dict(),
    "hsc": dict(n_ccds=4, ccd_nx=2048, ccd_ny=4176, n_fields=1, visits_per_field=4,
                field_step_arcsec=0.0, dither_arcsec=120.0, rotation_range_deg=10.0,
                distortion_arcsec=10.0, distortion_radius_deg=0.75,
                star_density=6000.0, star_mag_range=[15.0, 24.5], star_count_slope=0.2,
                galaxy_density=150000.0),
}


def preset_config(preset: str = "tiny", overrides: list[str] | None = None,
                  files: list[str] | None = None) -> SimConfig:
    """The :class:`SimConfig` of ``preset`` with ``--configfile``/``--config`` overrides.

    Raises
    ------
    UserError
        For an unknown preset or an invalid override.
    """
    if preset not in PRESETS:
        raise UserError(f"--preset {preset}: unknown preset; use one of "
                        f"{', '.join(PRESETS)}")
    config = SimConfig(**PRESETS[preset])
    if overrides or files:
        config = config.with_overrides(overrides, files)
    for f in config.filters:
        if f not in config.zero_point or f not in config.sky_mag:
            raise UserError(f"filter {f}: no zero_point/sky_mag configured; the simulator "
                            "knows HSC-R and HSC-I (add both keys to use another)")
        if f not in ("HSC-R", "HSC-I"):
            raise UserError(f"filter {f}: the simulator has colour terms for HSC-R and "
                            "HSC-I only")
    lo, hi = config.seeing_range
    if not 0 < lo <= hi:
        raise UserError(f"seeing_range {config.seeing_range}: need 0 < min <= max")
    return config
