"""Object-ID packing: hscPipe's bit budget, round trips at the limits."""
from __future__ import annotations

import numpy as np
import pytest

from tractpatch.errors import UserError
from tractpatch.skymap import ObjectIdPacker


def test_bit_budget():
    p = ObjectIdPacker()
    assert (p.tract_bits, p.patch_bits, p.filter_bits, p.counter_bits) == (16, 5, 5, 32)
    assert p.max_tract == 65535
    # by hand: tract 1, patch (2, 3), filter 4, counter 5
    assert p.pack(1, 2, 3, 5, 4) == (((((1 << 5) | 2) << 5 | 3) << 5 | 4) << 32) | 5


@pytest.mark.parametrize("fb", [0, 5, 8])
def test_round_trip_at_the_limits(fb):
    p = ObjectIdPacker(filter_bits=fb)
    top = dict(tract=65535, px=31, py=31, counter=(1 << p.counter_bits) - 1,
               filt=(1 << fb) - 1)
    for t in (0, 1, 9813, 18937, top["tract"]):
        for px, py in ((0, 0), (30, 30), (31, 31), (0, 31)):
            for c in (0, 1, top["counter"]):
                for f in {0, top["filt"]}:
                    oid = p.pack(t, px, py, c, f)
                    assert 0 <= oid < 2**63
                    assert p.unpack(oid) == (t, px, py, c, f)
    ids = p.pack(np.array([0, 65535]), np.array([31, 0]), np.array([0, 31]),
                 np.array([top["counter"], 7]), np.array([top["filt"], 0]))
    assert ids.dtype == np.int64 and np.all(ids >= 0)
    back = p.unpack(ids)
    assert back[0].tolist() == [0, 65535] and back[3].tolist() == [top["counter"], 7]
    # the largest ID is the positive int64 maximum
    assert p.pack(65535, 31, 31, top["counter"], top["filt"]) == 2**63 - 1


def test_out_of_range_is_one_line():
    p = ObjectIdPacker()
    with pytest.raises(UserError, match="patch x 32 does not fit in 5 bits"):
        p.pack(0, 32, 0, 0)
    with pytest.raises(UserError, match="tract 65536"):
        p.pack(65536, 0, 0, 0)
    with pytest.raises(UserError, match="counter"):
        p.pack(0, 0, 0, 2**32)
