"""Joint astrometric and photometric calibration (jointcal.py).

Modules, in the order the fit uses them:

- :mod:`.inputs` — Detections / CcdImage / RefCatalog dataclasses, SRC reading + selection;
- :mod:`.tangent` — the tract's tangent plane (arcsec);
- :mod:`.initial` — per-visit pointing/rotation search, per-CCD affine touch-up;
- :mod:`.association` — cross-visit friends-of-friends, unambiguous reference matches;
- :mod:`.astrometry_models`, :mod:`.photometry_models` — simple and constrained models;
- :mod:`.problems` — the two least-squares problems as residual rows;
- :mod:`.fitter` — sparse Gauss-Newton with stars eliminated (Schur complement);
- :mod:`.solver` — the whole fit on in-memory inputs (``fit_jointcal``);
- :mod:`.outputs` — TAN-SIP headers and PhotoCalib Chebyshevs; :mod:`.metrics`;
- :mod:`.task` — the CmdLineTask; :mod:`.synthetic` — test/benchmark data with truth.
"""
