"""Property-based tests (hypothesis) of header parsing: instrument keyword lookups,
ExposureInfo keywords, and the registry row of a CCD from arbitrary header cards.

Headers go through real FITS card images (``Header.tostring``/``fromstring``), so the
values are what a file on disk would give. The data-ID syntax has its own property tests
in tests/test_dataid.py.
"""
import math
import string
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from tractpatch.errors import UserError
from tractpatch.image.exposure import ExposureInfo
from tractpatch.repo import load_instrument
from tractpatch.repo.ingest import exposure_row
from tractpatch.repo.instrument import Instrument
from tests.conftest import tan_header

# FITS string values: printable ASCII; FITS drops trailing blanks. astropy 8.0 misreads
# a string holding a quote followed by a slash (``a'/b`` reads back as ``a'``), so the
# two are not drawn together.
fits_text = st.text(alphabet=string.ascii_letters + string.digits + " -_.:+/'()",
                    max_size=40).map(str.rstrip).filter(
                        lambda s: not ("'" in s and "/" in s))
fits_int = st.integers(min_value=-(2**53), max_value=2**53)
fits_float = st.floats(allow_nan=False, allow_infinity=False, width=64)
fits_value = st.one_of(fits_text, fits_int, fits_float, st.booleans())
keyword = st.text(alphabet=string.ascii_uppercase + string.digits + "-_", min_size=1,
                  max_size=8)


def on_disk(cards: dict) -> fits.Header:
    """The header a FITS file with these cards reads back as."""
    h = fits.Header()
    for k, v in cards.items():
        h[k] = v
    return fits.Header.fromstring(h.tostring())


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-15, abs=0)
    return a == b and type(a) is type(b)


@settings(max_examples=150, deadline=None)
@given(cards=st.dictionaries(keyword, fits_value, max_size=6),
       specs=st.lists(keyword, min_size=1, max_size=4))
def test_lookup_first_present_keyword_wins(cards, specs):
    header = on_disk(cards)
    inst = Instrument(name="t", keywords={"visit": specs})
    present = [k for k in specs if k in header and header[k] not in (None, "")]
    got = inst.lookup("visit", header)
    if present:
        assert same(got, header[present[0]])
    else:
        assert got is None
    assert inst.lookup("ccd", header) is None  # a key with no keyword list


@settings(max_examples=150, deadline=None)
@given(prefix=st.text(alphabet=string.ascii_letters + "_-", max_size=6),
       number=st.integers(min_value=0, max_value=10**12), fallback=fits_int,
       use_regex_value=st.booleans())
def test_lookup_regex_group_or_fall_through(prefix, number, fallback, use_regex_value):
    """``KEY|regex`` gives group 1 when it matches, else the next keyword is tried."""
    value = f"{prefix}{number}" if use_regex_value else prefix + "x"
    header = on_disk({"FRAMEID": value, "EXPNUM": fallback})
    inst = Instrument(name="t", keywords={"visit": [r"FRAMEID|(\d+)$", "EXPNUM"]})
    got = inst.lookup("visit", header)
    if use_regex_value:
        assert got == str(number)
    elif value.rstrip() == "":
        assert got == fallback
    else:
        assert got == fallback


@settings(max_examples=100, deadline=None)
@given(filters=st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=4),
                               st.lists(st.text(string.ascii_letters + " -",
                                                min_size=1, max_size=8).map(str.strip)
                                        .filter(bool), max_size=3),
                               min_size=1, max_size=4),
       suffix=st.text(string.ascii_letters + " ", max_size=5))
def test_canonical_filter_aliases_and_longest_prefix(filters, suffix):
    inst = Instrument(name="t", filters=filters)
    for canon, aliases in filters.items():
        assert inst.canonical_filter(canon) in filters  # a canonical name is known
        for a in aliases:
            got = inst.canonical_filter(a + suffix)
            assert got in filters
            # the winner's alias is a prefix of the raw value, and no longer one exists
            raw = (a + suffix).strip()
            if raw in filters or any(raw in al for al in filters.values()):
                continue  # exact matches win over prefixes
            best = max(len(x) for al in filters.values() for x in al if raw.startswith(x))
            assert any(raw.startswith(x) and len(x) == best for x in filters[got])


info_fields = st.fixed_dictionaries({
    "visit": st.integers(0, 2**40), "ccd": st.integers(0, 999),
    "ccdname": fits_text.filter(bool), "filter": fits_text.filter(bool),
    "field": fits_text.filter(bool), "pointing": st.integers(0, 99999),
    "instrument": fits_text.filter(bool),
    "exptime": st.floats(0.001, 1e5), "mjd": st.floats(40000, 70000),
    "date_obs": fits_text.filter(bool), "gain": st.floats(0.01, 100),
    "saturation": st.floats(1, 1e7), "psf_fwhm": st.floats(0.1, 10),
})


@settings(max_examples=150, deadline=None)
@given(values=info_fields, drop=st.sets(st.sampled_from(list(ExposureInfo.KEYWORDS))),
       extra=st.dictionaries(keyword.filter(
           lambda k: k not in ExposureInfo.KEYWORDS.values()), fits_value, max_size=5))
def test_exposure_info_round_trip_through_cards(values, drop, extra):
    kept = {k: v for k, v in values.items() if k not in drop}
    info = ExposureInfo(**kept)
    h = fits.Header()
    for k, v in extra.items():  # unrelated cards are ignored
        h[k] = v
    info.to_header(h)
    back = ExposureInfo.from_header(fits.Header.fromstring(h.tostring()))
    for name in ExposureInfo.KEYWORDS:
        a, b = getattr(info, name), getattr(back, name)
        if name == "timesys":
            assert b == "UTC"
        elif isinstance(a, float):
            assert b == pytest.approx(a, rel=1e-15)
        else:
            assert a == b


def _ccd_hdul(cards: dict) -> fits.HDUList:
    h = tan_header(150.0, 2.0, crpix=(5, 5), **cards)
    h = fits.Header.fromstring(h.tostring())
    return fits.HDUList([fits.PrimaryHDU(np.zeros((10, 10), np.float32), h)])


header_cards = st.fixed_dictionaries({}, optional={
    "EXPNUM": st.one_of(fits_int, fits_text, fits_float),
    "CCDNUM": st.one_of(st.integers(0, 200), fits_text),
    "FILTER": st.one_of(fits_text, fits_int),
    "EXPTIME": st.one_of(fits_float, fits_text, fits_int),
    "POINTING": st.one_of(st.integers(0, 10**6), fits_text, fits_float),
    "OBJECT": fits_text,
    "MJD-OBS": st.one_of(fits_float, fits_text),
    "DATE-OBS": fits_text,
})


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(cards=header_cards)
def test_registry_row_from_arbitrary_cards_or_one_line_error(cards):
    """Any header gives either a correct row or a UserError naming the file."""
    path = Path("/data/raw/cam-0042.fits")
    hdul = _ccd_hdul(cards)
    header = hdul[0].header
    try:
        row = exposure_row(path, hdul, 0, load_instrument("generic"))
    except UserError as exc:
        msg = str(exc)
        assert str(path) in msg and "\n" not in msg
        return
    # the row holds what the header says (known answers from the cards)
    if isinstance(header.get("EXPNUM"), int) and not isinstance(header["EXPNUM"], bool):
        assert row["visit"] == header["EXPNUM"]
    if isinstance(header.get("CCDNUM"), int):
        assert row["ccd"] == header["CCDNUM"]
    assert row["filter"] == str(header["FILTER"]).strip()
    if "EXPTIME" in header and header["EXPTIME"] != "":
        assert row["expTime"] == pytest.approx(float(header["EXPTIME"])) and row["expTime"] > 0
    assert row["pointing"] == (int(header["POINTING"]) if header.get("POINTING") not in
                               (None, "") else 0)
    assert (row["nx"], row["ny"]) == (10, 10)
    assert row["ra_center"] == pytest.approx(150.0, abs=1e-3)
    if row["mjd"] is not None:
        assert math.isfinite(row["mjd"])
