"""Per-CCD source detection and measurement (``detectSources.py``), built on sep.

Modules: :mod:`.background` (sky estimation), :mod:`.detect` (thresholded, deblended
extraction), :mod:`.measure` (windowed centroids, aperture and PSF-like fluxes, shapes,
mask flags), :mod:`.classify` (stellar locus, aperture correction, star/galaxy),
:mod:`.catalog` (the SRC file format of ``docs/interfaces.md``), :mod:`.task` (the
command-line task).
"""
