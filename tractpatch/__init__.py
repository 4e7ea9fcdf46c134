"""tractpatch: tract/patch joint calibration and coaddition for mosaic cameras.

The stages (``skymap``, ``jointcal``, ``coadd``, ``diagnostics``) build on the shared
framework subpackages: ``image`` (Exposure and FITS I/O), ``repo`` (data repository,
registry, data IDs, instruments, ingest), ``cli`` (command-line tasks, configuration,
executors), ``sources`` (detection), ``refcat`` (reference catalogs) and ``sim`` (the
survey simulator).
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("tractpatch")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
