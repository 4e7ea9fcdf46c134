"""The shared command line: argument parser, typed configuration, task runner, executors."""
from .config import TaskConfig
from .task import CmdLineTask, TaskContext, provenance

__all__ = ["TaskConfig", "CmdLineTask", "TaskContext", "provenance"]
