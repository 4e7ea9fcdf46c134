"""Configuration of reference-catalog ingestion (LSST's column-map names).

``IngestRefCatConfig`` maps the columns of an input table onto the stored refcat schema
(see :mod:`tractpatch.refcat.ingest`). The names follow LSST's
``IngestIndexedReferenceConfig``/``ConvertRefcatConfig``: ``ra_name``, ``dec_name``,
``ra_err_name``, ``dec_err_name``, ``coord_err_unit``, ``mag_column_list``,
``mag_err_column_map``, ``pm_ra_name``, ``pm_dec_name``, ``epoch_name``, ``epoch_format``,
``parallax_name``; a few additions are documented on their fields.
"""
from __future__ import annotations

from typing import Literal

import astropy.units as u
from pydantic import Field, field_validator

from ..cli.config import TaskConfig


class IngestRefCatConfig(TaskConfig):
    """How to read an input table into a reference catalog."""

    input_format: Literal["auto", "table", "lsst"] = Field(
        "auto", description="'table': map columns with the *_name keys; 'lsst': an LSST "
        "refcat (coord_ra/coord_dec, <band>_flux in nJy); 'auto': lsst when the file has "
        "coord_ra and coord_dec and no ra_name column")
    id_name: str | None = Field(
        None, description="column with a unique source id (rows with a repeated id are "
        "ingested once); default: sequential ids")
    ra_name: str = Field("ra", description="column of right ascension (ICRS)")
    dec_name: str = Field("dec", description="column of declination (ICRS)")
    coord_unit: str = Field("deg", description="unit of ra_name/dec_name when the column "
                            "has no unit metadata (deg or rad)")
    ra_err_name: str | None = Field(
        None, description="column of the RA error, as an angle on the sky (sigma of "
        "RA*cos(dec), as Gaia's ra_error)")
    dec_err_name: str | None = Field(None, description="column of the Dec error")
    coord_err_unit: str = Field("mas", description="unit of ra_err_name/dec_err_name "
                                "(mas, arcsec, deg, radian, ...)")
    mag_column_list: list[str] = Field(
        default_factory=list, description="magnitude columns (AB) to store as fluxes in nJy")
    mag_err_column_map: dict[str, str] = Field(
        default_factory=dict, description="magnitude column -> its error column (mag)")
    mag_snr_column_map: dict[str, str] = Field(
        default_factory=dict, description="magnitude column -> a flux signal-to-noise "
        "column (e.g. Gaia's phot_g_mean_flux_over_error) when there is no mag error")
    band_name_map: dict[str, str] = Field(
        default_factory=dict, description="magnitude column -> band name of the stored "
        "<band>_flux column (default: the column name, as LSST does)")
    pm_ra_name: str | None = Field(
        None, description="column of proper motion in RA*cos(dec) (mas/yr times pm_scale)")
    pm_dec_name: str | None = Field(None, description="column of proper motion in Dec")
    pm_ra_err_name: str | None = Field(None, description="column of the pm_ra error")
    pm_dec_err_name: str | None = Field(None, description="column of the pm_dec error")
    pm_scale: float = Field(1.0, description="factor converting the proper-motion columns "
                            "to mas/yr")
    epoch_name: str | None = Field(None, description="column of the epoch of the positions")
    epoch_format: str = Field("jyear", description="astropy Time format of epoch_name "
                              "(jyear, decimalyear, mjd, jd, ...)")
    epoch_scale: str = Field("tcb", description="astropy Time scale of epoch_name (Gaia: "
                             "tcb)")
    epoch_value: float | None = Field(
        None, description="epoch of all positions (in epoch_format) when there is no "
        "epoch column")
    parallax_name: str | None = Field(None, description="column of parallax (mas)")
    parallax_err_name: str | None = Field(None, description="column of the parallax error "
                                          "(mas)")
    extra_col_names: list[str] = Field(
        default_factory=list, description="other columns copied unchanged")
    shard_nside: int = Field(64, description="HEALPix nside of the shards (nested "
                             "ordering); 64 gives 0.92 deg pixels")
    photometric_system: str | None = Field(
        None, description="name under which colour terms are looked up (ps1, sdss, ...); "
        "default: the catalog name")

    @field_validator("shard_nside")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v < 1 or v & (v - 1):
            raise ValueError("shard_nside must be a power of 2")
        return v

    @field_validator("coord_err_unit", "coord_unit")
    @classmethod
    def _angle_unit(cls, v: str) -> str:
        try:
            unit = u.Unit(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an angle unit (mas, arcsec, deg, radian)")
        if unit.physical_type != "angle":
            raise ValueError(f"{v!r} is not an angle unit (mas, arcsec, deg, radian)")
        return v
