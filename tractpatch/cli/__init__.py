"""The shared command line: argument parser, typed configuration, task runner, executors.

The names are imported on first use (PEP 562): a stage's configuration module imports
``tractpatch.cli.config`` without pulling in the task runner and the registry
(SQLAlchemy), which worker processes and library users do not need.
"""
from importlib import import_module

__all__ = ["TaskConfig", "CmdLineTask", "TaskContext", "provenance"]

_WHERE = {"TaskConfig": ".config", "CmdLineTask": ".task", "TaskContext": ".task",
          "provenance": ".task"}


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
