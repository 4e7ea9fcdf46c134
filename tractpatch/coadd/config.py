"""Configuration of coaddDriver (warping and assembly)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..cli.config import TaskConfig
from .warp import DEFAULT_BAD_PLANES


class CoaddDriverConfig(TaskConfig):
    """coaddDriver.py configuration (``--config NAME=VALUE``)."""

    warpingMethod: Literal["lanczos", "reproject_exact", "reproject_adaptive"] = Field(
        "lanczos", description="resampler: our numba Lanczos warper (fast), or reproject's "
        "flux-conserving reproject_exact / reproject_adaptive")
    warpingKernel: Literal["lanczos2", "lanczos3", "lanczos4", "lanczos5", "bilinear"] = \
        Field("lanczos3", description="kernel of the lanczos warping method")
    interpLength: int = Field(32, ge=1, description="spacing (pixels) of the coarse grid "
                              "on which the exact pixel->sky->pixel transform is computed")
    maxTransformError: float = Field(0.01, gt=0, description="bound (pixels) on the "
                                     "coarse-grid interpolation error; grid refined to meet")
    warpMaskThreshold: float = Field(0.1, ge=0, lt=1, description="fraction of a warped "
                                     "pixel's kernel weight from flagged input pixels above "
                                     "which the flag is propagated")
    badMaskPlanes: list[str] = Field(list(DEFAULT_BAD_PLANES), description="mask planes "
                                     "whose pixels are excluded from warping and stacking")
    statistic: Literal["MEANCLIP", "MEAN", "MEDIAN"] = Field(
        "MEANCLIP", description="stacking statistic")
    sigmaClip: float = Field(3.0, gt=0, description="MEANCLIP clipping threshold (sigma)")
    clipAmpFrac: float = Field(1.0, ge=0, description="MEANCLIP: fraction of the pixel "
                               "level added in quadrature to the clipping sigma (as SWarp's "
                               "CLIP_AMPFRAC, default there 0.3) so that star cores of the "
                               "best-seeing visits are not clipped: 1.0 tolerates seeing "
                               "ratios up to ~2 between visits; artefacts on sky are still "
                               "clipped at sigmaClip")
    clipIter: int = Field(2, ge=1, description="MEANCLIP clipping passes")
    doArtifactRejection: bool = Field(False, description="compare each visit's warp "
                                      "with a robust template (mean of 2, median of 3+) "
                                      "and mask (REJECTED) positive residual footprints "
                                      "found in a minority of the visits (satellite "
                                      "trails, ghosts) before the statistic, as LSST's "
                                      "CompareWarpAssembleCoadd; works with 2 visits")
    artifactThreshold: float = Field(3.0, gt=0, description="artifacts: footprint "
                                     "threshold (sigma of the difference)")
    artifactPeakThreshold: float = Field(5.0, gt=0, description="artifacts: minimum "
                                         "peak significance of a footprint")
    artifactMinArea: int = Field(20, ge=1, description="artifacts: minimum footprint "
                                 "area (pixels)")
    artifactGrow: int = Field(2, ge=0, description="artifacts: footprints grown by this "
                              "radius (pixels) before masking")
    artifactAmpFrac: float = Field(1.0, ge=0, description="artifacts: fraction of the "
                                   "template level added in quadrature to the noise, so "
                                   "star cores seen in better seeing are not cut")
    artifactMaxFractionEpochs: float = Field(0.4, gt=0, le=1, description="artifacts: "
                                             "a footprint is an artifact where at most "
                                             "max(1, floor(this x n)) of the n visits "
                                             "have one")
    artifactSpatialFraction: float = Field(0.5, gt=0, le=1, description="artifacts: "
                                           "fraction of a footprint's pixels that must "
                                           "satisfy the epoch rule")
    artifactSourceThreshold: float = Field(3.0, gt=0, description="artifacts: "
                                           "template pixels whose level is above this "
                                           "S/N (grown) are sources")
    artifactSourceGrow: int = Field(4, ge=0, description="artifacts: growth radius "
                                    "(pixels) of the template sources")
    artifactMaxSourceFraction: float = Field(0.5, gt=0, le=1, description="artifacts: "
                                             "footprints with at least this fraction of "
                                             "their pixels on template sources are kept "
                                             "(seeing differences); 1 disables")
    artifactMargin: int = Field(32, ge=0, description="artifacts: rows above and below "
                                "each stacking band also compared, so footprints are "
                                "judged across band borders")
    maskPropagationThresholds: dict[str, float] = Field(
        {"SAT": 0.1}, description="plane: minimum fraction of the covering weight flagged "
        "for the plane to be set in the coadd")
    doSubtractBackground: bool = Field(True, description="compatibility switch, used "
                                       "only when backgroundMethod is not set: True = "
                                       "'subtract', False = 'none'")
    backgroundMethod: Literal["subtract", "match", "none"] | None = Field(
        None, description="sky handling before warping: 'subtract' each CALEXP's sky (sep "
        "mesh, as SExtractor/SWarp; removes extended emission larger than the mesh), "
        "'match' overlapping CALEXPs with one constant offset each (Montage mBgModel; "
        "keeps the mean sky and extended emission, removes the steps), 'none'; unset "
        "(null): derived from doSubtractBackground; when set it wins over it")
    backgroundMatchBin: int = Field(8, ge=1, description="match: binning (pixels) of the "
                                    "tract grid on which overlaps are compared")
    backgroundMatchSigma: float = Field(3.0, gt=0, description="match: sigma clipping of "
                                        "each overlap's median difference")
    backgroundMatchMinPixels: int = Field(10, ge=1, description="match: minimum binned "
                                          "pixels for an overlap to count")
    backgroundMeshSize: int = Field(128, ge=8, description="background mesh size (pixels)")
    backgroundFilterSize: int = Field(3, ge=1, description="median filter of the background "
                                      "meshes")
    zeroPoint: float = Field(27.0, description="AB zero point of the coadd pixel values")
    maxStackMemoryMB: float = Field(150.0, gt=0, description="memory for one subregion's "
                                    "stack of inputs; sets the subregion height")
    maxWarpMemoryMB: float = Field(400.0, ge=0, description="memory for the CCD warps "
                                   "of a patch waiting to be stacked; beyond it they are "
                                   "spilled to temporary .npy files in the rerun")
    prefetchInputs: bool = Field(True, description="read the next CALEXP in a background "
                                 "thread while the current one is warped")
    doWriteWarps: bool = Field(False, description="also write the per-visit warps "
                               "(deepCoadd_warp)")
    calexpDataset: str = Field("calexp", description="dataset of the calibrated inputs")

    @property
    def background_method(self) -> str:
        """The effective sky handling: ``backgroundMethod`` or, when unset, the one
        ``doSubtractBackground`` means (True -> 'subtract', False -> 'none')."""
        if self.backgroundMethod is not None:
            return self.backgroundMethod
        return "subtract" if self.doSubtractBackground else "none"
