"""Joint astrometric and photometric calibration (jointcal.py and mosaic.py).

Modules, in the order the fit uses them:

- :mod:`.inputs` — Detections / CcdImage / RefCatalog dataclasses, SRC reading + selection;
- :mod:`.tangent` — the tract's tangent plane (arcsec);
- :mod:`.initial` — per-visit pointing/rotation search, per-visit focal-plane
  distortion polynomial grown from the centre, per-CCD affine touch-up;
- :mod:`.association` — cross-visit friends-of-friends, unambiguous reference matches,
  flux checks of both (crowded neighbours);
- :mod:`.astrometry_models`, :mod:`.photometry_models` — simple and constrained models;
- :mod:`.problems` — the two least-squares problems as residual rows;
- :mod:`.fitter` — sparse Gauss-Newton with stars eliminated (Schur complement);
- :mod:`.solver` — the whole fit on in-memory inputs (``fit_jointcal``);
- :mod:`.outputs` — TAN-SIP headers and PhotoCalib Chebyshevs; :mod:`.metrics`;
- :mod:`.task` — the CmdLineTasks' shared base (``JointFitTask``: reading with ``-j``,
  outputs, ``--diagnostics``) and jointcal's; :mod:`.synthetic` — test data with truth;
- mosaic.py, meas_mosaic's algorithm on the same pipeline: :mod:`.mosaic_models` (rigid
  CCDs, per-visit Chebyshev series), :mod:`.mosaic_solver` (``fit_mosaic``),
  :mod:`.mosaic_task`;
- :mod:`.diagnostics_adapter` — a finished fit of either solver as the diagnostics
  writer's ``FitDiagnostics``.
"""
