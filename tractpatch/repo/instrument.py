"""Instrument descriptions (YAML): header keywords, filters, CCDs and companion files.

A description (see ``tractpatch/instruments/*.yaml`` for the shipped ones)::

    name: decam
    hdus: extensions        # primary | extensions | auto (primary if it has an image)
    keywords:               # first keyword present wins; "KEY|regex" takes group 1
      visit: [EXPNUM]
      ccd: [CCDNUM]
      ...
    filters: {g: ["g DECam"]}   # canonical name: raw values or prefixes
    ccds: {43: {gain: 4.07}}    # per-CCD overrides
    companions:                 # pattern fields: {dir} {stem} {name}; replace: in stem
      weight: {replace: {"_ooi_": "_oow_"}, kind: weight}
      mask: {replace: {"_ooi_": "_ood_"}}
    mask_codes: {kind: values, map: {1: BAD, 3: SAT, 5: CR}}
    companion_markers: ["_oow_", "_ood_"]   # files that are companions, not images
    quirks: []                  # e.g. [ps1]
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from ..errors import UserError

_FITS_EXT = re.compile(r"\.(fits|fit|fts)(\.fz|\.gz|\.bz2)?$|\.fz$", re.IGNORECASE)


@dataclass
class Instrument:
    """A parsed instrument description; see the module docstring for the YAML."""

    name: str
    hdus: str = "auto"
    keywords: dict[str, list[str]] = field(default_factory=dict)
    filters: dict[str, list[str]] = field(default_factory=dict)
    ccds: dict = field(default_factory=dict)
    companions: dict[str, dict] = field(default_factory=dict)
    mask_codes: dict | None = None
    companion_markers: list[str] = field(default_factory=list)
    quirks: list[str] = field(default_factory=list)
    description: str = ""

    @classmethod
    def from_dict(cls, d: dict, source: str = "instrument") -> "Instrument":
        """Build from a parsed YAML mapping, rejecting unknown keys."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise UserError(f"{source}: unknown instrument keys {sorted(unknown)}; "
                            f"allowed: {sorted(known)}")
        if "name" not in d:
            raise UserError(f"{source}: instrument description needs a name")
        if d.get("hdus", "auto") not in ("auto", "primary", "extensions"):
            raise UserError(f"{source}: hdus must be auto, primary or extensions")
        return cls(**d)

    # --- header keyword lookups -----------------------------------------------
    def lookup(self, key: str, header):
        """Value of data-ID/metadata ``key`` from ``header`` via the keyword list."""
        for spec in self.keywords.get(key, []):
            kw, _, regex = spec.partition("|")
            if kw in header and header[kw] not in (None, ""):
                value = header[kw]
                if regex:
                    m = re.search(regex, str(value))
                    if not m:
                        continue
                    value = m.group(1)
                return value
        return None

    def canonical_filter(self, raw) -> str | None:
        """Canonical filter name of a raw header value (exact match, then prefix)."""
        if raw is None:
            return None
        raw = str(raw).strip()
        for canon, aliases in self.filters.items():
            if raw == canon or raw in aliases:
                return canon
        best = None
        for canon, aliases in self.filters.items():
            for a in aliases:
                if raw.startswith(a) and (best is None or len(a) > len(best[1])):
                    best = (canon, a)
        if best:
            return best[0]
        return raw if not self.filters else None

    def ccd_override(self, ccd, ccdname=None) -> dict:
        """Per-CCD overrides (by number or name)."""
        return dict(self.ccds.get(ccd) or self.ccds.get(str(ccd))
                    or (self.ccds.get(ccdname) if ccdname else None) or {})

    # --- files ----------------------------------------------------------------
    def is_companion(self, path) -> bool:
        """True if ``path`` is a weight/mask companion, not an image to ingest."""
        name = Path(path).name
        return any(m in name for m in self.companion_markers)

    def companion_paths(self, path) -> dict[str, tuple[Path, str]]:
        """``{kind: (path, weight_kind)}`` of the companions that exist for ``path``."""
        path = Path(path)
        name = path.name
        m = _FITS_EXT.search(name)
        stem = name[: m.start()] if m else name
        ext = name[m.start():] if m else ""
        out = {}
        for kind, spec in self.companions.items():
            s = stem
            for a, b in (spec.get("replace") or {}).items():
                s = s.replace(a, b)
            pattern = spec.get("pattern", "{dir}/{stem}{ext}")
            cand = Path(pattern.format(dir=path.parent, stem=s, name=name, ext=ext))
            if cand != path and cand.exists():
                out[kind] = (cand, spec.get("kind", kind))
        return out


def assigned_visit(path) -> int:
    """A deterministic visit number for a file that has none (from its file name)."""
    name = Path(path).name
    m = _FITS_EXT.search(name)
    stem = name[: m.start()] if m else name
    return 1_000_000 + zlib.crc32(stem.encode()) % 9_000_000


def available_instruments() -> list[str]:
    """Names of the shipped instrument descriptions."""
    return sorted(p.name[:-5] for p in resources.files("tractpatch.instruments").iterdir()
                  if p.name.endswith(".yaml"))


def load_instrument(name_or_file: str | None) -> Instrument:
    """A shipped instrument by name, or a YAML description file."""
    name_or_file = name_or_file or "generic"
    p = Path(name_or_file)
    if name_or_file.endswith((".yaml", ".yml")) or p.exists():
        if not p.exists():
            raise UserError(f"{p}: instrument file not found")
        try:
            d = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"{p}: not valid YAML ({exc})") from None
        return Instrument.from_dict(d, str(p))
    res = resources.files("tractpatch.instruments") / f"{name_or_file}.yaml"
    if not res.is_file():
        raise UserError(f"--instrument {name_or_file}: unknown instrument; use one of "
                        f"{', '.join(available_instruments())} or a YAML file")
    return Instrument.from_dict(yaml.safe_load(res.read_text()), name_or_file)
