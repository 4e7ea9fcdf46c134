"""hscPipe data-ID syntax: ``--id visit=20878..20890:2 ccd=0^5^7 filter=HSC-I``.

- ``a..b`` is an inclusive integer range, ``a..b:s`` with stride ``s``;
- ``x^y^z`` is a list (items may themselves be ranges);
- several keys form the cross product; several ``--id`` options are a union;
- the result is intersected with what the registry holds (``Registry.expand``).

``patch`` values are ``x,y`` pairs and stay strings; integer keys are converted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError

#: The data-ID keys, with the type of their values.
DATA_ID_KEYS: dict[str, type] = {
    "visit": int, "ccd": int, "filter": str, "field": str, "pointing": int,
    "dateObs": str, "tract": int, "patch": str,
}


def _parse_int_item(key: str, item: str) -> list[int]:
    if ".." in item:
        rng, _, stride = item.partition(":")
        lo, _, hi = rng.partition("..")
        try:
            lo, hi = int(lo), int(hi)
            step = int(stride) if stride else 1
        except ValueError:
            raise UserError(f"--id {key}={item}: a range must be a..b or a..b:stride with "
                            "integers, e.g. visit=20878..20890:2") from None
        if step <= 0:
            raise UserError(f"--id {key}={item}: stride must be positive")
        if hi < lo:
            raise UserError(f"--id {key}={item}: empty range (end before start)")
        return list(range(lo, hi + 1, step))
    try:
        return [int(item)]
    except ValueError:
        raise UserError(f"--id {key}={item}: {key} takes integers, ranges a..b[:s] "
                        "or lists x^y") from None


def parse_id_value(key: str, text: str) -> list:
    """Values of one ``key=text`` term, expanded (ranges and ``^`` lists)."""
    if key not in DATA_ID_KEYS:
        raise UserError(f"--id {key}={text}: unknown key {key!r}; use one of "
                        + ", ".join(DATA_ID_KEYS))
    if text == "":
        raise UserError(f"--id {key}=: empty value; give a value, e.g. {key}=1")
    if not text.isprintable():
        raise UserError(f"--id {key}={text!r}: the value holds non-printable characters")
    items = text.split("^")
    if any(i == "" for i in items):
        raise UserError(f"--id {key}={text}: empty item in the ^ list")
    values: list = []
    for item in items:
        if DATA_ID_KEYS[key] is int:
            values.extend(_parse_int_item(key, item))
        else:
            if key == "patch" and not _is_patch(item):
                raise UserError(f"--id patch={item}: a patch is x,y with integers, "
                                "e.g. patch=4,5^4,6")
            values.append(item)
    # keep order, drop duplicates
    return list(dict.fromkeys(values))


def _is_patch(item: str) -> bool:
    parts = item.split(",")
    return len(parts) == 2 and all(p.strip().lstrip("-").isdigit() for p in parts)


@dataclass
class DataIdSpec:
    """One ``--id`` option: key → allowed values (the cross product of them)."""

    terms: dict[str, list] = field(default_factory=dict)

    def matches(self, data_id: dict) -> bool:
        """True if ``data_id`` has an allowed value for every key it shares."""
        return all(k not in data_id or data_id[k] in v for k, v in self.terms.items())

    def __str__(self) -> str:
        return " ".join(f"{k}={'^'.join(map(str, v))}" for k, v in self.terms.items())


def parse_id_args(tokens: list[str]) -> DataIdSpec:
    """Parse the tokens of one ``--id`` option (``["visit=1..3", "ccd=0^5"]``)."""
    if not tokens:
        raise UserError("--id needs at least one KEY=VALUE, e.g. --id visit=1..3 ccd=0")
    spec = DataIdSpec()
    for tok in tokens:
        key, sep, text = tok.partition("=")
        if not tok.isprintable():
            raise UserError(f"--id {tok!r}: non-printable characters")
        if not sep or not key:
            raise UserError(f"--id {tok}: malformed, expected KEY=VALUE (e.g. visit=1..3)")
        if key in spec.terms:
            raise UserError(f"--id: key {key} given twice in one --id; use ^ for lists")
        spec.terms[key] = parse_id_value(key, text)
    return spec
