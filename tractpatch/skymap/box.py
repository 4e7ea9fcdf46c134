"""Integer pixel boxes, end-exclusive: ``Box(x0, y0, x1, y1)`` holds x0 <= x < x1."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """An integer pixel box; ``x1``/``y1`` are one past the last pixel (end-exclusive).

    Pixel ``i`` covers the continuous interval ``[i - 0.5, i + 0.5)`` (LSST convention,
    0-based pixel centres).
    """

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        """Number of pixels along x."""
        return max(self.x1 - self.x0, 0)

    @property
    def height(self) -> int:
        """Number of pixels along y."""
        return max(self.y1 - self.y0, 0)

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)``, the numpy shape of an image covering the box."""
        return (self.height, self.width)

    @property
    def is_empty(self) -> bool:
        """True when the box holds no pixel."""
        return self.width == 0 or self.height == 0

    @classmethod
    def from_float(cls, xmin: float, ymin: float, xmax: float, ymax: float) -> "Box":
        """Smallest integer box holding every pixel that overlaps the float box.

        The float box is in continuous pixel coordinates (edges at ``i +- 0.5``); this
        is LSST's ``Box2I(Box2D, EXPAND)``.
        """
        x0 = math.floor(xmin + 0.5)
        y0 = math.floor(ymin + 0.5)
        x1 = math.ceil(xmax - 0.5) + 1
        y1 = math.ceil(ymax - 0.5) + 1
        return cls(x0, y0, x1, y1)

    def grow(self, n: int) -> "Box":
        """The box grown by ``n`` pixels on every side (shrunk when negative)."""
        return Box(self.x0 - n, self.y0 - n, self.x1 + n, self.y1 + n)

    def shift(self, dx: int, dy: int) -> "Box":
        """The box moved by ``(dx, dy)`` pixels."""
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def clip(self, other: "Box") -> "Box":
        """Intersection with ``other`` (an empty box at ``x0, y0`` when disjoint)."""
        x0, y0 = max(self.x0, other.x0), max(self.y0, other.y0)
        x1, y1 = min(self.x1, other.x1), min(self.y1, other.y1)
        if x1 <= x0 or y1 <= y0:
            return Box(x0, y0, x0, y0)
        return Box(x0, y0, x1, y1)

    def overlaps(self, other: "Box") -> bool:
        """True when the two boxes share at least one pixel."""
        return not self.clip(other).is_empty

    def contains(self, x, y):
        """Whether integer pixel ``(x, y)`` (scalars or arrays) lies in the box."""
        return (x >= self.x0) & (x < self.x1) & (y >= self.y0) & (y < self.y1)

    def contains_box(self, other: "Box") -> bool:
        """True when ``other`` lies entirely inside this box."""
        return (other.x0 >= self.x0 and other.y0 >= self.y0 and other.x1 <= self.x1
                and other.y1 <= self.y1)

    def float_corners(self) -> list[tuple[float, float]]:
        """Pixel-edge corners (min, (maxX, minY), max, (minX, maxY)), LSST order."""
        xa, xb = self.x0 - 0.5, self.x1 - 0.5
        ya, yb = self.y0 - 0.5, self.y1 - 0.5
        return [(xa, ya), (xb, ya), (xb, yb), (xa, yb)]

    def to_list(self) -> list[int]:
        """``[x0, y0, x1, y1]`` for YAML/JSON."""
        return [int(self.x0), int(self.y0), int(self.x1), int(self.y1)]

    def __str__(self) -> str:
        return f"Box(x={self.x0}..{self.x1 - 1}, y={self.y0}..{self.y1 - 1})"
