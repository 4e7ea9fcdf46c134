"""Reading ingested CCDs: any supported format, with companions and instrument rules."""
from __future__ import annotations

from functools import lru_cache

from ..image.exposure import Exposure, ExposureInfo
from ..image.fits_io import read_exposure
from .instrument import load_instrument


@lru_cache(maxsize=16)
def _instrument(name):
    return load_instrument(name)


def info_from_row(row: dict) -> ExposureInfo:
    """ExposureInfo from a registry row (the registry is the truth for data-ID keys)."""
    return ExposureInfo(visit=row["visit"], ccd=row["ccd"], ccdname=row.get("ccdname"),
                        filter=row["filter"], field=row.get("field"),
                        pointing=row.get("pointing"), instrument=row.get("instrument"),
                        exptime=row.get("expTime"), mjd=row.get("mjd"),
                        date_obs=row.get("dateObs"), gain=row.get("gain"),
                        saturation=row.get("saturation"))


def load_exposure(repo, row: dict) -> Exposure:
    """Read the ingested CCD of registry ``row`` as an Exposure.

    Our MEF is read as written; foreign files get their weight/variance and mask
    companions and the instrument's mask codes and header quirks. Metadata keys come
    from the registry row.
    """
    inst = _instrument(row.get("instrument") or "generic")
    path = repo.exposure_path(row)
    hdu = row.get("hdu")
    kwargs = dict(mask_codes=inst.mask_codes, quirks=tuple(inst.quirks))
    wpath = repo.companion_path(row, "weight")
    if wpath is not None:
        key = "weight" if (row.get("weight_kind") or "weight") == "weight" else "variance"
        kwargs[key] = (wpath, _hdu(row.get("weight_hdu")))
    mpath = repo.companion_path(row, "mask")
    if mpath is not None:
        kwargs["mask"] = (mpath, _hdu(row.get("mask_hdu")))
    exp = read_exposure(path, hdu=_hdu(hdu), **kwargs)
    info = exp.info
    reg = info_from_row(row)
    for k, v in vars(reg).items():
        if v is not None:
            setattr(info, k, v)
    return exp


def _hdu(h):
    if h is None:
        return None
    try:
        return int(h)
    except ValueError:
        return h
