"""A minimal CmdLineTask for testing the shared runner: writes one small file per CCD."""
import sys

from pydantic import Field

from tractpatch.atomic import write_text_atomic
from tractpatch.cli import CmdLineTask, TaskConfig
from tractpatch.errors import DataQualityError


class EchoConfig(TaskConfig):
    scale: float = Field(2.0, description="a number written to every output")
    failVisit: int = Field(-1, description="visit that raises a data-quality flag")
    crashVisit: int = Field(-1, description="visit that raises an unexpected error")


class EchoTask(CmdLineTask):
    name = "echoTask"
    ConfigClass = EchoConfig

    def run_unit(self, data_id):
        if data_id["visit"] == self.config.failVisit:
            raise DataQualityError(f"visit={data_id['visit']}: no stars")
        if data_id["visit"] == self.config.crashVisit:
            raise OSError("disk on fire")
        p = self.repo.rerun_dir / f"echo-{data_id['visit']}-{data_id['ccd']}.txt"
        write_text_atomic(p, f"{self.config.scale}\n")
        return data_id["visit"]


if __name__ == "__main__":
    sys.exit(EchoTask.main())
