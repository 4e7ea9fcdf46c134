"""Typed, validated task configuration (pydantic models) with ``--config`` overrides.

Each task declares a subclass of :class:`TaskConfig` whose fields carry defaults and a
description. ``--config NAME=VALUE`` values are parsed as YAML scalars/lists (so
``doApplyCalib=False``, ``order=5``, ``radii=[3,6,9]``); dotted names reach nested
configs. Unknown names and wrong types end in one line naming the key.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import UserError


class TaskConfig(BaseModel):
    """Base of every task configuration: unknown keys are errors, values validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True,
                              validate_default=True)

    # --- overrides -----------------------------------------------------------------
    def with_overrides(self, pairs: list[str] | None = None,
                       files: list[str] | None = None) -> "TaskConfig":
        """A copy with ``--configfile`` files then ``--config NAME=VALUE`` applied."""
        data = self.model_dump()
        for f in files or []:
            p = Path(f)
            if not p.exists():
                raise UserError(f"--configfile {f}: no such file")
            try:
                loaded = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as exc:
                raise UserError(f"--configfile {f}: not valid YAML ({exc})") from None
            if not isinstance(loaded, dict):
                raise UserError(f"--configfile {f}: expected a mapping of NAME: VALUE")
            for k, v in _flatten(loaded, model=type(self)).items():
                _set_dotted(data, k, v, self, f"--configfile {f}")
        for pair in pairs or []:
            name, sep, text = pair.partition("=")
            if not sep or not name:
                raise UserError(f"--config {pair}: expected NAME=VALUE")
            try:
                value = yaml.safe_load(text) if text != "" else ""
            except yaml.YAMLError:
                value = text
            _set_dotted(data, name, value, self, f"--config {pair}")
        try:
            return type(self).model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise UserError(f"--config {loc}: {err['msg']}; see --show config for the "
                            "allowed values") from None

    # --- persistence ---------------------------------------------------------------
    def to_yaml(self) -> str:
        """YAML text of the full configuration (stable key order)."""
        return yaml.safe_dump(json.loads(self.model_dump_json()), sort_keys=True)

    def config_hash(self) -> str:
        """Short SHA-256 of the canonical configuration (recorded in output headers)."""
        canon = json.dumps(json.loads(self.model_dump_json()), sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    @classmethod
    def describe(cls) -> str:
        """One line per field: name, type, default and description."""
        lines = []
        for name, f in cls.model_fields.items():
            lines.append(f"{name} = {f.default!r}  # {f.description or ''}")
        return "\n".join(lines)


def _flatten(d: dict, prefix: str = "", model=None) -> dict:
    """Dotted names of a nested mapping; a dict-valued field (not a nested config)
    stays one value."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        fields = getattr(model, "model_fields", None)
        sub = fields[k].annotation if fields is not None and k in fields else None
        nested = isinstance(sub, type) and issubclass(sub, BaseModel)
        if isinstance(v, dict) and (nested or fields is None or k not in fields):
            out.update(_flatten(v, key + ".", sub if nested else None))
        else:
            out[key] = v
    return out


def _set_dotted(data: dict, name: str, value, config: BaseModel, where: str) -> None:
    parts = name.split(".")
    target = data
    model = type(config)
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            known = ", ".join(fields) if fields else "(none)"
            raise UserError(f"{where}: unknown config key {'.'.join(parts[:i + 1])!r}; "
                            f"known keys: {known}")
        if i == len(parts) - 1:
            target[part] = value
        else:
            target = target[part]
            model = fields[part].annotation
