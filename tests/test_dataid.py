"""Data-ID syntax: known expansions, errors, and property-based checks."""
import pytest
from hypothesis import given, settings, strategies as st

from tractpatch.errors import UserError
from tractpatch.repo.dataid import parse_id_args, parse_id_value


def test_range_with_stride_is_inclusive():
    assert parse_id_value("visit", "20878..20890:2") == list(range(20878, 20891, 2))
    assert parse_id_value("visit", "20878..20890:2")[-1] == 20890


def test_list_and_mixed():
    assert parse_id_value("ccd", "0^5^7") == [0, 5, 7]
    assert parse_id_value("ccd", "0..2^9") == [0, 1, 2, 9]
    assert parse_id_value("ccd", "3^3") == [3]  # duplicates dropped


def test_string_keys_and_patch():
    assert parse_id_value("filter", "HSC-I^HSC-R") == ["HSC-I", "HSC-R"]
    assert parse_id_value("patch", "4,5^4,6") == ["4,5", "4,6"]


def test_cross_product_matching():
    spec = parse_id_args(["visit=1..3", "ccd=0^5"])
    assert spec.matches({"visit": 2, "ccd": 5})
    assert not spec.matches({"visit": 4, "ccd": 5})
    assert not spec.matches({"visit": 2, "ccd": 1})
    # keys the data ID lacks (tract for an exposure row) do not exclude it
    assert parse_id_args(["visit=1", "tract=0"]).matches({"visit": 1, "ccd": 3})


@pytest.mark.parametrize("tokens, fragment", [
    ([], "at least one"),
    (["visit"], "malformed"),
    (["visit="], "empty value"),
    (["visitt=1"], "unknown key"),
    (["visit=a..b"], "integers"),
    (["visit=5..1"], "empty range"),
    (["visit=1..5:0"], "stride"),
    (["visit=1^^2"], "empty item"),
    (["patch=4"], "x,y"),
    (["visit=1", "visit=2"], "twice"),
])
def test_errors_are_one_line_user_errors(tokens, fragment):
    with pytest.raises(UserError) as exc:
        parse_id_args(tokens)
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


@settings(max_examples=200, deadline=None)
@given(lo=st.integers(0, 10_000), n=st.integers(0, 50), step=st.integers(1, 7))
def test_range_property(lo, n, step):
    hi = lo + n
    values = parse_id_value("visit", f"{lo}..{hi}:{step}")
    assert values == list(range(lo, hi + 1, step))
    assert all(lo <= v <= hi for v in values)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=20))
def test_list_property(items):
    values = parse_id_value("ccd", "^".join(map(str, items)))
    assert values == list(dict.fromkeys(items))


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=20))
def test_arbitrary_text_never_crashes(text):
    """Any value either parses or raises a one-line UserError, never anything else."""
    try:
        parse_id_args([f"visit={text}"])
    except UserError as exc:
        assert "\n" not in str(exc)
