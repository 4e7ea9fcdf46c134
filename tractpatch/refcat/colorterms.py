"""Colour terms: reference-catalog bands -> an instrument's filter.

For a filter, ``filter_mag = primary + c0 + c1*(primary - secondary)
+ c2*(primary - secondary)**2`` (magnitudes AB), as LSST's ``Colorterm``. Terms are kept
per instrument and per reference photometric system, the system matched by a glob
pattern (``"ps1*"``) against the catalog's ``photometric_system`` (default its name).

Shipped: HSC from PS1 and from SDSS, the values of obs_subaru's ``config/colorterms.py``
(hscPipe/LSST, "ps1*" and "sdss*" dictionaries, HSC-G..HSC-Y, HSC-R2, HSC-I2 and the
narrow bands); CFHT MegaCam from PS1 (obs_cfht, instrument ``megacam``). More terms
can be added without code in ``ROOT/ref_cats/colorterms.yaml``::

    hsc:                      # instrument name
      ps1*:                   # photometric-system pattern
        HSC-R: {primary: r, secondary: i, c0: -0.000294, c1: -0.005458, c2: -0.009451}

A filter named like a band of the catalog (``r`` with an ``r_flux`` column) and no term
uses that band unchanged.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..errors import UserError

_REL = 2.5 / np.log(10.0)  # mag error per relative flux error


@dataclass(frozen=True)
class Colorterm:
    """``filter_mag = primary + c0 + c1*C + c2*C**2`` with ``C = primary - secondary``."""

    primary: str
    secondary: str
    c0: float = 0.0
    c1: float = 0.0
    c2: float = 0.0

    def transform_mags(self, primary_mag, secondary_mag):
        """Filter magnitude from the two reference-band magnitudes."""
        colour = np.asarray(primary_mag) - np.asarray(secondary_mag)
        return np.asarray(primary_mag) + self.c0 + self.c1 * colour + self.c2 * colour**2

    def transform_fluxes(self, fluxes: dict, errors: dict):
        """Filter flux and error (nJy) from reference fluxes and errors (nJy) per band.

        The error propagates both bands' errors through the polynomial (LSST keeps only
        the primary's); identical bands combine into the primary's error.
        """
        from .ingest import mag_to_njy, njy_to_mag

        fp, fs = np.asarray(fluxes[self.primary]), np.asarray(fluxes[self.secondary])
        mp, ms = njy_to_mag(fp), njy_to_mag(fs)
        m = self.transform_mags(mp, ms)
        with np.errstate(invalid="ignore", divide="ignore"):
            sp = _REL * np.asarray(errors[self.primary]) / fp
            ss = _REL * np.asarray(errors[self.secondary]) / fs
        if self.primary == self.secondary:
            sigma = sp
        else:
            dcol = self.c1 + 2.0 * self.c2 * (mp - ms)
            sigma = np.hypot((1.0 + dcol) * sp, dcol * ss)
        flux = mag_to_njy(m)
        return flux, flux * sigma / _REL


# hscPipe/LSST obs_subaru config/colorterms.py ("ps1*" and "sdss*" dictionaries, filter
# names as in HSC data IDs).
_PS1_HSC = {
    "HSC-G": ("g", "r", 0.005905, 0.063651, -0.000716),
    "HSC-R": ("r", "i", -0.000294, -0.005458, -0.009451),
    "HSC-R2": ("r", "i", 0.000118, -0.002790, -0.014363),
    "HSC-I": ("i", "z", 0.000979, -0.154608, -0.010429),
    "HSC-I2": ("i", "z", 0.001653, -0.206313, -0.016085),
    "HSC-Z": ("z", "y", -0.005585, -0.220704, -0.298211),
    "HSC-Y": ("y", "z", -0.001952, 0.199570, 0.216821),
    "IB0945": ("y", "z", 0.005275, -0.194285, -0.125424),
    "NB0387": ("g", "r", 0.427879, 1.869068, 0.540580),
    "NB0468": ("g", "r", -0.042240, 0.121756, 0.027599),
    "NB0515": ("g", "r", -0.021913, -0.253159, 0.151553),
    "NB0527": ("g", "r", -0.020641, -0.366167, 0.038497),
    "NB0656": ("r", "i", 0.035658, -0.512071, 0.042824),
    "NB0718": ("i", "r", -0.016294, -0.233139, 0.252505),
    "NB0816": ("i", "z", 0.013806, -0.717681, 0.049289),
    "NB0921": ("z", "y", 0.002039, -0.477412, -0.492151),
    "NB0973": ("y", "z", -0.007775, -0.050972, -0.197278),
    "NB1010": ("y", "z", 0.003607, 0.865366, 1.271817),
}
_SDSS_HSC = {
    "HSC-G": ("g", "r", -0.00816446, -0.08366937, -0.00726883),
    "HSC-R": ("r", "i", 0.00231810, 0.01284177, -0.03068248),
    "HSC-R2": ("r", "i", 0.00074087, -0.00830543, -0.02848420),
    "HSC-I": ("i", "z", 0.00130204, -0.16922042, -0.01374245),
    "HSC-I2": ("i", "z", 0.00124676, -0.20739606, -0.01067212),
    "HSC-Z": ("z", "i", -0.00680620, 0.01353969, 0.01479369),
    "HSC-Y": ("z", "i", 0.01739708, 0.35652971, 0.00574408),
    "NB0816": ("i", "z", 0.00927133, -0.63558358, -0.05474862),
    "NB0921": ("z", "i", 0.00752972, 0.09863530, -0.05451118),
}


# obs_cfht config/colorterms.py, "ps1*" (MegaCam filters as in CFHT headers).
_PS1_MEGACAM = {
    "u.MP9301": ("u", "g", 0.0, -0.241, 0.0),
    "g.MP9401": ("g", "r", 0.0, -0.153, 0.0),
    "r.MP9601": ("r", "g", 0.0, 0.024, 0.0),
    "i.MP9701": ("i", "r", 0.0, 0.085, 0.0),
    "z.MP9801": ("z", "i", 0.0, -0.074, 0.0),
}


def _terms(table: dict) -> dict[str, Colorterm]:
    return {f: Colorterm(*v) for f, v in table.items()}


#: instrument -> photometric-system pattern -> filter -> Colorterm
DEFAULT_LIBRARY: dict[str, dict[str, dict[str, Colorterm]]] = {
    "hsc": {"ps1*": _terms(_PS1_HSC), "sdss*": _terms(_SDSS_HSC)},
    "megacam": {"ps1*": _terms(_PS1_MEGACAM)},
}


def load_library(root=None) -> dict:
    """The shipped terms merged with ``ROOT/ref_cats/colorterms.yaml`` when present."""
    lib = {inst: {pat: dict(d) for pat, d in pats.items()}
           for inst, pats in DEFAULT_LIBRARY.items()}
    if root is None:
        return lib
    path = Path(root) / "ref_cats" / "colorterms.yaml"
    if not path.exists():
        return lib
    try:
        data = yaml.safe_load(path.read_text()) or {}
        for inst, pats in data.items():
            for pat, filters in pats.items():
                for filt, spec in filters.items():
                    lib.setdefault(str(inst).lower(), {}).setdefault(str(pat), {})[
                        str(filt)] = Colorterm(**spec)
    except (yaml.YAMLError, TypeError, AttributeError) as exc:
        from .ingest import _one_line

        raise UserError(f"{path}: not a colour-term file (instrument: pattern: filter: "
                        f"{{primary, secondary, c0, c1, c2}}): {_one_line(exc)}") from None
    return lib


def find_colorterm(filter_name: str, instrument, system: str, bands: list[str],
                   root=None, catalog: str | None = None) -> Colorterm:
    """The colour term of ``filter_name`` for a catalog of ``system`` with ``bands``.

    Order: the instrument's terms for a pattern matching ``system`` (or the catalog
    name); with no instrument, a unique match among all instruments; then identity for a
    filter named like a band. Anything else is a one-line UserError with the remedy.
    """
    inst = getattr(instrument, "name", instrument)
    inst = str(inst).lower() if inst else None
    lib = load_library(root)
    names = [n for n in (system, catalog) if n]
    candidates = []
    for iname, pats in lib.items():
        if inst is not None and iname != inst:
            continue
        for pat, filters in pats.items():
            if filter_name in filters and any(fnmatch.fnmatch(n, pat) for n in names):
                candidates.append(filters[filter_name])
    if inst is None and filter_name in bands:
        return Colorterm(filter_name, filter_name)
    if len(candidates) >= 1 and (inst is not None or len(set(candidates)) == 1):
        term = candidates[0]
        missing = {term.primary, term.secondary} - set(bands)
        if missing:
            raise UserError(f"colour term of filter {filter_name!r} needs band(s) "
                            f"{sorted(missing)} that reference catalog "
                            f"{catalog or system!r} lacks (bands: {', '.join(bands)})")
        return term
    if filter_name in bands:
        return Colorterm(filter_name, filter_name)
    where = f"instrument {inst!r}" if inst else "any instrument"
    raise UserError(f"no colour term for filter {filter_name!r} of {where} from reference "
                    f"catalog {catalog or system!r} (system {system!r}, bands "
                    f"{', '.join(bands)}); add one to ROOT/ref_cats/colorterms.yaml "
                    "(see tractpatch.refcat.colorterms) or use a catalog with that band")
