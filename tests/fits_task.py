"""A CmdLineTask for the reliability tests: one sizable FITS image per CCD, slowly.

Each unit writes ``rerun/R/fits-<visit>-<ccd>.fits`` (deterministic pixels from the data
ID) through :func:`tractpatch.atomic.atomic_path`, pausing inside the atomic write so a
kill lands mid-write. Config switches make a unit's worker die (``os._exit``) once or
always, or the disk fill up half-way through the write.
"""
import errno
import os
import sys
import time

import numpy as np
from astropy.io import fits
from pydantic import Field

from tractpatch.atomic import atomic_path
from tractpatch.cli import CmdLineTask, TaskConfig
from tractpatch.errors import DataQualityError


class FitsConfig(TaskConfig):
    size: int = Field(256, description="image side in pixels")
    pause: float = Field(0.0, description="seconds to wait inside the atomic write")
    flagVisit: int = Field(-1, description="visit flagged with a data-quality problem")
    dieOnceVisit: int = Field(-1, description="visit whose worker dies on its first try")
    dieAlwaysVisit: int = Field(-1, description="visit whose worker always dies")
    diskFullVisit: int = Field(-1, description="visit whose write hits a full disk")
    faultVisit: int = Field(-1, description="visit whose units raise an I/O error")


def expected_image(visit: int, ccd: int, size: int) -> np.ndarray:
    """The pixels a unit writes (known answer for the tests)."""
    y, x = np.mgrid[:size, :size].astype(np.float32)
    return (visit * 1000.0 + ccd + 0.001 * x + 1e-6 * y).astype(np.float32)


class FitsTask(CmdLineTask):
    name = "fitsTask"
    ConfigClass = FitsConfig

    def output(self, data_id):
        return self.repo.rerun_dir / f"fits-{data_id['visit']}-{data_id['ccd']}.fits"

    def run_unit(self, data_id):
        visit, ccd = data_id["visit"], data_id["ccd"]
        cfg = self.config
        if visit == cfg.flagVisit:
            raise DataQualityError(f"visit={visit} ccd={ccd}: no stars")
        if visit == cfg.faultVisit:
            raise OSError(errno.EIO, "input/output error reading the raw file")
        if visit == cfg.dieAlwaysVisit:
            os._exit(3)
        if visit == cfg.dieOnceVisit:
            marker = self.repo.rerun_dir / f"died-{visit}-{ccd}"
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os._exit(3)
            except FileExistsError:
                pass
        header = fits.Header()
        header.update(self.provenance())
        header["VISIT"], header["CCD"] = visit, ccd
        hdul = fits.HDUList([fits.PrimaryHDU(expected_image(visit, ccd, cfg.size),
                                             header)])
        path = self.output(data_id)
        with atomic_path(path) as tmp:
            if visit == cfg.diskFullVisit:
                data = _to_bytes(hdul)
                with open(tmp, "wb") as f:
                    f.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
            hdul.writeto(tmp, checksum=True)
            time.sleep(cfg.pause)
        return visit


def _to_bytes(hdul) -> bytes:
    import io

    buf = io.BytesIO()
    hdul.writeto(buf, checksum=True)
    return buf.getvalue()


class StackTask(CmdLineTask):
    """A later, per-visit stage: lists the CCDs of a visit it may use from fitsTask.

    This is how a stage respects the ledger of an earlier one: ``unit_ok`` is True for
    a clean input, False for a flagged one (left out), and raises UpstreamNotDone
    for a faulted or missing one (this unit is then blocked: a fault).
    """

    name = "stackTask"
    ConfigClass = TaskConfig
    level = "visit"

    def units(self, ids, select):
        return [{"visit": v} for v in sorted({r["visit"] for r in
                                              self.repo.registry.exposures(ids or None)})]

    def run_unit(self, data_id):
        reg = self.repo.registry
        ccds = [r["ccd"] for r in reg.exposures(visit=data_id["visit"])]
        used = [c for c in ccds if reg.unit_ok(self.repo.rerun, "fitsTask",
                                               {"visit": data_id["visit"], "ccd": c})]
        if not used:
            raise DataQualityError(f"visit={data_id['visit']}: every CCD is flagged")
        from tractpatch.atomic import write_text_atomic

        write_text_atomic(self.repo.rerun_dir / f"stack-{data_id['visit']}.txt",
                          " ".join(map(str, used)) + "\n")
        return used


if __name__ == "__main__":
    if sys.argv[1:2] == ["stack"]:
        sys.exit(StackTask.main(sys.argv[2:]))
    sys.exit(FitsTask.main())
