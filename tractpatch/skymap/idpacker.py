"""Object IDs: tract, patch x, patch y, filter and a per-patch counter in 64 bits.

hscPipe's budget: 16 bits of tract, 5 + 5 bits of patch x and y, the rest for the
filter and the per-patch counter. The sign bit stays clear so IDs are positive int64.
Because patch indices have 5 bits, coaddDriver refuses tracts with 31 or more patches
along an axis (see :data:`tractpatch.skymap.base.MAX_PATCHES_PER_AXIS`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class ObjectIdPacker:
    """Pack/unpack ``(tract, patch_x, patch_y, filter_index, counter)`` in an int64.

    Layout from the most significant end: 1 sign bit (0), ``tract_bits``,
    ``patch_bits`` (x), ``patch_bits`` (y), ``filter_bits``, then the counter in the
    remaining bits. ``filter_bits = 0`` gives single-filter IDs.
    """

    tract_bits: int = 16
    patch_bits: int = 5
    filter_bits: int = 5

    @property
    def counter_bits(self) -> int:
        """Bits left for the per-patch counter."""
        n = 63 - self.tract_bits - 2 * self.patch_bits - self.filter_bits
        if n <= 0:
            raise ValueError("no bits left for the counter")
        return n

    def _limits(self):
        return {"tract": 1 << self.tract_bits, "patch": 1 << self.patch_bits,
                "filter": 1 << self.filter_bits, "counter": 1 << self.counter_bits}

    def pack(self, tract, patch_x, patch_y, counter, filter_index=0):
        """The object ID (scalar or int64 array); UserError naming the field that does
        not fit its bits."""
        lim = self._limits()
        arrays = {"tract": tract, "patch x": patch_x, "patch y": patch_y,
                  "counter": counter, "filter": filter_index}
        for name, v in arrays.items():
            key = "patch" if name.startswith("patch") else name
            a = np.asarray(v, dtype=np.int64)
            if np.any(a < 0) or np.any(a >= lim[key]):
                raise UserError(f"object ID: {name} {int(np.max(a))} does not fit in "
                                f"{int(lim[key]).bit_length() - 1} bits "
                                f"(0..{lim[key] - 1})")
        cb, fb, pb = self.counter_bits, self.filter_bits, self.patch_bits
        out = np.asarray(tract, dtype=np.int64)
        out = (out << pb) | np.asarray(patch_x, dtype=np.int64)
        out = (out << pb) | np.asarray(patch_y, dtype=np.int64)
        out = (out << fb) | np.asarray(filter_index, dtype=np.int64)
        out = (out << cb) | np.asarray(counter, dtype=np.int64)
        return int(out) if out.ndim == 0 else out

    def unpack(self, object_id):
        """``(tract, patch_x, patch_y, counter, filter_index)`` of IDs."""
        v = np.asarray(object_id, dtype=np.int64)
        cb, fb, pb = self.counter_bits, self.filter_bits, self.patch_bits
        counter = v & ((1 << cb) - 1)
        v = v >> cb
        filt = v & ((1 << fb) - 1)
        v = v >> fb
        py = v & ((1 << pb) - 1)
        v = v >> pb
        px = v & ((1 << pb) - 1)
        tract = v >> pb
        parts = (tract, px, py, counter, filt)
        if np.ndim(object_id) == 0:
            return tuple(int(p) for p in parts)
        return parts

    @property
    def max_tract(self) -> int:
        """Largest tract ID that fits."""
        return (1 << self.tract_bits) - 1
