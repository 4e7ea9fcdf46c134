"""The simulated sky: stars (with PS1 colours and proper motions) and galaxies.

Star colours follow a simple stellar locus in PS1 bands; a star's HSC magnitude is its
PS1 magnitude plus the HSC–PS1 colour term (LSST ``Colorterm`` convention)::

    m_HSC = m_primary + c0 + c1 (m_primary - m_secondary) + c2 (m_primary - m_secondary)^2

with :data:`COLOR_TERMS` (obs_subaru's PS1 colour terms). The reference catalog
(:func:`make_refcat`) lists the stars with Gaia-like astrometry and PS1-like photometry.
"""
from __future__ import annotations

import numpy as np
from astropy.table import Table

from ..image.photocalib import AB_FLUX_NJY
from .camera import tangent_to_sky

#: HSC filter → (primary PS1 band, secondary band, c0, c1, c2).
COLOR_TERMS: dict[str, tuple[str, str, float, float, float]] = {
    "HSC-R": ("r", "i", -0.000294, -0.005458, -0.009451),
    "HSC-I": ("i", "z", 0.000979, -0.154608, -0.010429),
}

PS1_BANDS = ("g", "r", "i", "z", "y")
REF_EPOCH = 2016.0


def hsc_mag_from_ps1(filt: str, mags: dict) -> np.ndarray:
    """HSC magnitude of stars from their PS1 magnitudes (``mags[band]`` arrays)."""
    p, s, c0, c1, c2 = COLOR_TERMS[filt]
    col = np.asarray(mags[p]) - np.asarray(mags[s])
    return np.asarray(mags[p]) + c0 + c1 * col + c2 * col ** 2


def mag_to_njy(mag):
    """AB magnitude → flux (nJy)."""
    return AB_FLUX_NJY * 10 ** (-0.4 * np.asarray(mag, float))


def power_law_mags(rng, n, lo, hi, slope):
    """``n`` magnitudes in [lo, hi] with dN/dm ∝ 10^(slope m)."""
    if slope == 0:
        return rng.uniform(lo, hi, n)
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    return np.log10(a + (b - a) * rng.uniform(0, 1, n)) / slope


def stellar_locus(t):
    """PS1 colours (g-r, r-i, i-z, z-y) along a stellar locus parameter t in [0, 1]
    (t=0: F stars, t=1: mid-M dwarfs)."""
    gr = 0.25 + 1.25 * t
    ri = 0.08 + 0.35 * t + 1.3 * np.clip(t - 0.75, 0, None) * 4.0 * t
    iz = 0.03 + 0.45 * ri
    zy = 0.01 + 0.22 * ri
    return gr, ri, iz, zy


def random_positions(rng, n, ra0, dec0, half_width_deg):
    """``n`` positions uniform in a square of the tangent plane about (ra0, dec0)."""
    xi = rng.uniform(-half_width_deg, half_width_deg, n)
    eta = rng.uniform(-half_width_deg, half_width_deg, n)
    return tangent_to_sky(xi, eta, ra0, dec0)


def make_objects(config, rng, ra0, dec0, half_width_deg) -> Table:
    """True stars and galaxies in a square of side ``2 half_width_deg`` about (ra0, dec0).

    Returns
    -------
    Table
        Columns: ``id``, ``type`` (star|galaxy), ``ra``, ``dec`` (deg, epoch 2016.0),
        ``epoch``, ``pmra`` (mas/yr, includes cos dec), ``pmdec``, ``flux_<filter>``
        (nJy) and ``mag_<filter>`` (AB) for HSC-R and HSC-I, PS1 ``g r i z y`` (stars;
        NaN for galaxies), ``sersic_n`` (0 for stars), ``r_e`` (arcsec, half-light
        radius along the major axis), ``q`` (axis ratio), ``pa`` (deg east of north).
    """
    area = (2 * half_width_deg) ** 2
    ns = int(rng.poisson(config.star_density * area))
    ng = int(rng.poisson(config.galaxy_density * area))
    # --- stars ---
    s_ra, s_dec = random_positions(rng, ns, ra0, dec0, half_width_deg)
    imag = power_law_mags(rng, ns, *config.star_mag_range, config.star_count_slope)
    t = rng.beta(1.3, 1.6, ns)
    gr, ri, iz, zy = stellar_locus(t)
    ps1 = {"i": imag, "r": imag + ri, "g": imag + ri + gr, "z": imag - iz,
           "y": imag - iz - zy}
    # halo/disk mix of proper motions (mas/yr)
    fast = rng.uniform(0, 1, ns) < 0.2
    sig = np.where(fast, 15.0, 4.0)
    pmra, pmdec = rng.normal(0, sig), rng.normal(0, sig)
    # --- galaxies ---
    g_ra, g_dec = random_positions(rng, ng, ra0, dec0, half_width_deg)
    g_i = power_law_mags(rng, ng, *config.galaxy_mag_range, config.galaxy_count_slope)
    g_ri = rng.normal(0.4, 0.15, ng)
    bulge = rng.uniform(0, 1, ng) < 0.3
    r_e = 10 ** (rng.normal(-0.12 - 0.08 * (g_i - 20.0), 0.18))
    r_e = np.clip(np.where(bulge, 0.7 * r_e, r_e), 0.12, 6.0)
    q = rng.uniform(0.3, 1.0, ng)
    pa = rng.uniform(0, 180, ng)

    n = ns + ng
    tab = Table()
    tab["id"] = np.arange(1, n + 1, dtype=np.int64)
    tab["type"] = np.array(["star"] * ns + ["galaxy"] * ng, dtype="U6")
    tab["ra"] = np.concatenate([s_ra, g_ra])
    tab["dec"] = np.concatenate([s_dec, g_dec])
    tab["epoch"] = np.full(n, REF_EPOCH)
    tab["pmra"] = np.concatenate([pmra, np.zeros(ng)])
    tab["pmdec"] = np.concatenate([pmdec, np.zeros(ng)])
    hsc = {"HSC-R": np.concatenate([hsc_mag_from_ps1("HSC-R", ps1), g_i + g_ri]),
           "HSC-I": np.concatenate([hsc_mag_from_ps1("HSC-I", ps1), g_i])}
    for f, m in hsc.items():
        tab[f"mag_{f}"] = m
        tab[f"flux_{f}"] = mag_to_njy(m)
    for b in PS1_BANDS:
        tab[b] = np.concatenate([ps1[b], np.full(ng, np.nan)])
    tab["sersic_n"] = np.concatenate([np.zeros(ns), np.where(bulge, 4.0, 1.0)])
    tab["r_e"] = np.concatenate([np.zeros(ns), r_e])
    tab["q"] = np.concatenate([np.ones(ns), q])
    tab["pa"] = np.concatenate([np.zeros(ns), pa])
    units = {"ra": "deg", "dec": "deg", "epoch": "yr", "pmra": "mas / yr",
             "pmdec": "mas / yr", "r_e": "arcsec", "pa": "deg"}
    for f in hsc:
        units[f"flux_{f}"] = "nJy"
        units[f"mag_{f}"] = "mag"
    for b in PS1_BANDS:
        units[b] = "mag"
    for k, u in units.items():
        tab[k].unit = u
    return tab


def make_refcat(objects: Table, mag_limit: float, rng) -> Table:
    """The reference catalog: stars with PS1 r < ``mag_limit``, measured with errors.

    Astrometry is Gaia-like at epoch 2016.0 (position errors 0.02–0.6 mas growing with
    magnitude, proper-motion errors 0.03–0.7 mas/yr); photometry PS1-like (errors
    0.004–0.05 mag). Every value is the truth plus a Gaussian draw of its error.
    """
    stars = objects[(objects["type"] == "star") & (objects["r"] < mag_limit)]
    n = len(stars)
    r = np.asarray(stars["r"], float)
    pos_err = 0.02 + 0.6 * 10 ** (0.4 * (r - 21.0))          # mas
    pm_err = 1.2 * pos_err                                      # mas/yr
    cosd = np.cos(np.radians(np.asarray(stars["dec"], float)))
    out = Table()
    out["id"] = stars["id"]
    out["ra"] = np.asarray(stars["ra"]) + rng.normal(0, pos_err) / 3.6e6 / cosd
    out["dec"] = np.asarray(stars["dec"]) + rng.normal(0, pos_err) / 3.6e6
    out["ra_err"] = pos_err
    out["dec_err"] = pos_err
    out["pmra"] = np.asarray(stars["pmra"]) + rng.normal(0, pm_err)
    out["pmdec"] = np.asarray(stars["pmdec"]) + rng.normal(0, pm_err)
    out["pmra_err"] = pm_err
    out["pmdec_err"] = pm_err
    out["epoch"] = np.full(n, REF_EPOCH)
    for b in PS1_BANDS:
        m = np.asarray(stars[b], float)
        err = np.hypot(0.004, 0.02 * 10 ** (0.4 * (m - 21.0)))
        out[b] = m + rng.normal(0, err)
        out[f"{b}_err"] = err
    for k, u in {"ra": "deg", "dec": "deg", "ra_err": "mas", "dec_err": "mas",
                 "pmra": "mas / yr", "pmdec": "mas / yr", "pmra_err": "mas / yr",
                 "pmdec_err": "mas / yr", "epoch": "yr"}.items():
        out[k].unit = u
    for b in PS1_BANDS:
        out[b].unit = "mag"
        out[f"{b}_err"].unit = "mag"
    return out
