"""Configuration of jointcal.py (names follow LSST's jointcal where one exists)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..cli.config import TaskConfig


class JointFitConfig(TaskConfig):
    """Settings shared by jointcal.py and mosaic.py: inputs, selection, association,
    robust start, fitting and outputs (the models are each solver's own)."""

    astrometryRefCat: Optional[str] = Field(None, description="reference catalog for "
                                            "astrometry (ref_cats/<name>); default: the only one")
    photometryRefCat: Optional[str] = Field(None, description="reference catalog for "
                                            "photometry; default: astrometryRefCat")
    doAstrometry: bool = Field(True, description="fit and write the WCSs")
    doPhotometry: bool = Field(True, description="fit and write the photoCalibs")
    minSnr: float = Field(10.0, description="minimum PSF S/N of a fitted source")
    requireStar: bool = Field(True, description="use only is_star sources")
    photometryRefMinSnr: float = Field(20.0, ge=0, description="reference fluxes constrain "
                                       "only stars whose median S/N reaches this: near the "
                                       "minSnr cut, selected measurements are biased bright")
    matchRadius: float = Field(1.0, gt=0, description="cross-visit association radius (arcsec)")
    refMatchRadius: float = Field(1.0, gt=0, description="reference match radius (arcsec)")
    refMatchMaxMagDiff: float = Field(1.0, gt=0, description="a measurement this many "
                                      "magnitudes off its fitted star's median flux, or a "
                                      "reference match this far off its star's flux (after "
                                      "each visit's median zero point), is dropped: a "
                                      "crowded neighbour, e.g. of a saturated star")
    minMeasurementsPerCcd: int = Field(20, ge=1, description="CCDs with fewer associated "
                                       "measurements are dropped")
    initialOffsetMax: float = Field(15.0, gt=0, description="largest header pointing "
                                    "error searched (arcsec)")
    initialRotationMax: float = Field(0.15, ge=0, description="largest header rotation "
                                      "error searched (deg)")
    initialRotationStep: float = Field(0.02, gt=0, description="rotation grid step (deg)")
    astrometrySysError: float = Field(1.0, ge=0, description="systematic error added in "
                                      "quadrature to centroid errors (mas)")
    photometryErrorPedestal: float = Field(0.002, ge=0, description="fractional flux error "
                                           "added in quadrature")
    outlierRejectSigma: float = Field(5.0, gt=0, description="measurement rejection "
                                      "threshold (sigma)")
    maxOutlierRounds: int = Field(5, ge=0, description="rounds of outlier rejection")
    maxIterations: int = Field(20, ge=1, description="Gauss-Newton iterations per fit")
    convergenceTolerance: float = Field(1e-4, gt=0, description="relative chi2 change "
                                        "that ends a fit")
    denseLimit: int = Field(8000, ge=1, description="above this many free model "
                            "parameters the full sparse system is solved with splu")
    choleskyBackend: Literal["auto", "cholmod", "scipy"] = Field(
        "auto", description="sparse factorisation of the normal equations: cholmod "
        "(CHOLMOD via scikit-sparse), scipy (SuperLU), auto (cholmod where installed); "
        "dense systems (up to denseLimit parameters) use LAPACK unless cholmod is named")
    wcsFormat: Literal["tan-sip", "tpv"] = Field(
        "tan-sip", description="form of the written WCS: tan-sip (SIP polynomials A/B "
        "with inverse AP/BP) or tpv (PVi_j polynomial of order 3..7 on the intermediate "
        "coordinates, as SCAMP writes)")
    wcsTolerance: float = Field(1.0, gt=0, description="max deviation (mas) of the "
                                "written WCS from the fitted mapping")
    sipOrderMax: int = Field(9, ge=2, le=9, description="highest SIP order tried")
    properMotionMinSpan: float = Field(0.5, ge=0, description="fit proper motions of "
                                       "fitted stars when the visits span more than this "
                                       "(years), for each star measured on at least "
                                       "properMotionMinEpochs nights spanning at least "
                                       "this; other stars keep the reference proper "
                                       "motion, or none")
    properMotionMinEpochs: int = Field(3, ge=2, description="distinct nights a star needs "
                                       "for its proper motion to be fitted")
    properMotionRefError: float = Field(1.0, gt=0, description="error (mas/yr) of the "
                                        "reference proper motions: the prior of the "
                                        "fitted motions of reference stars")


class JointcalConfig(JointFitConfig):
    """Settings of the joint astrometric + photometric fit."""

    astrometryModel: Literal["simple", "constrained"] = Field(
        "constrained", description="simple: polynomial per CCD per visit; constrained: "
        "per-CCD affine shared by visits ∘ per-visit focal-plane polynomial")
    astrometrySimpleOrder: int = Field(3, ge=1, le=9, description="order of the simple model")
    astrometryVisitOrder: int = Field(5, ge=1, le=9, description="order of the per-visit "
                                      "focal-plane polynomial (constrained)")
    photometryModel: Literal["simple", "constrained"] = Field(
        "constrained", description="simple: constant per CCD per visit; constrained: "
        "per-CCD constant × per-visit focal-plane Chebyshev")
    photometryVisitOrder: int = Field(2, ge=0, le=7, description="order of the per-visit "
                                      "Chebyshev (constrained)")


class MosaicConfig(JointFitConfig):
    """Settings of mosaic.py (meas_mosaic's model; names follow its MosaicConfig)."""

    fittingOrder: int = Field(9, ge=1, le=11, description="order of the per-visit "
                              "focal-plane polynomial (Chebyshev series; 9 as HSC)")
    # 2, not HSC's 7: with a few hundred stars per visit (the mini survey: ~600) an
    # order-7 series (36 terms) follows the photometric noise between the stars and
    # misses the truth by 3.9 mmag RMS where order 2 gives 1.8 (tests/test_mosaic_flux.py);
    # 2 is also jointcal's photometryVisitOrder, so the two solvers compare like for like.
    fluxFitOrder: int = Field(2, ge=0, le=9, description="order of the per-visit "
                              "focal-plane Chebyshev of the flux correction (HSC's "
                              "meas_mosaic used 7 with ~100 CCDs; raise it only with "
                              "thousands of stars per visit)")
    minStarsPerParameter: float = Field(3.0, gt=0, description="every visit needs this "
                                        "many measurements per polynomial term; the orders "
                                        "are lowered (with a warning) until it has")
    doFluxFit: bool = Field(True, description="fit the flux correction (alias of "
                            "doPhotometry in meas_mosaic's naming; both must be true)")
    denseLimit: int = Field(0, ge=0, description="up to this many free model parameters "
                            "the Schur-complement block is solved dense; mosaic's default 0 "
                            "always solves the sparse normal equations (scipy.sparse + splu)")
