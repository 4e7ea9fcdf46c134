"""Spherical geometry on unit vectors: offsets, convex hulls, bounding circles, and
overlap of pixel-space polygons with boxes (all vectorised with numpy)."""
from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull


def radec_to_vec(ra, dec) -> np.ndarray:
    """Unit vectors ``(..., 3)`` of sky positions in degrees."""
    ra = np.radians(np.asarray(ra, dtype=float))
    dec = np.radians(np.asarray(dec, dtype=float))
    cd = np.cos(dec)
    return np.stack([cd * np.cos(ra), cd * np.sin(ra), np.sin(dec)], axis=-1)


def vec_to_radec(v) -> tuple[np.ndarray, np.ndarray]:
    """RA in [0, 360) and Dec (degrees) of vectors ``(..., 3)`` (any length)."""
    v = np.asarray(v, dtype=float)
    ra = np.degrees(np.arctan2(v[..., 1], v[..., 0])) % 360.0
    dec = np.degrees(np.arctan2(v[..., 2], np.hypot(v[..., 0], v[..., 1])))
    return ra, dec


def separation(ra1, dec1, ra2, dec2):
    """Angular separation in degrees (numerically stable at all angles)."""
    a = radec_to_vec(ra1, dec1)
    b = radec_to_vec(ra2, dec2)
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    return np.degrees(np.arctan2(cross, np.sum(a * b, axis=-1)))


def offset(ra: float, dec: float, bearing: float, distance: float) -> tuple[float, float]:
    """Move ``distance`` degrees along a great circle from (ra, dec).

    ``bearing`` (degrees) is measured from the direction of increasing RA (east) toward
    north, as lsst.geom's ``SpherePoint.offset``. At a pole, east is taken as the
    direction of RA = 90 deg (the +y axis of the equatorial frame) so the result is
    still well defined.
    """
    p = radec_to_vec(ra, dec)
    if np.hypot(p[0], p[1]) < 1e-15:
        east = np.array([0.0, 1.0, 0.0])
    else:
        east = np.array([-np.sin(np.radians(ra)), np.cos(np.radians(ra)), 0.0])
    north = np.cross(p, east)
    b = np.radians(bearing)
    d = np.radians(distance)
    direction = np.cos(b) * east + np.sin(b) * north
    q = np.cos(d) * p + np.sin(d) * direction
    r, de = vec_to_radec(q)
    return float(r), float(de)


def convex_hull_vertices(vecs: np.ndarray) -> np.ndarray:
    """Vertices of the spherical convex hull of unit vectors, counter-clockwise seen
    from outside the sphere. The points must lie within one hemisphere."""
    vecs = np.asarray(vecs, dtype=float)
    mean = vecs.sum(axis=0)
    norm = np.linalg.norm(mean)
    if norm < 1e-12:
        raise ValueError("points do not lie within one hemisphere")
    z = mean / norm
    if np.any(vecs @ z <= 0):
        raise ValueError("points do not lie within one hemisphere")
    # gnomonic projection about the mean keeps great circles straight, so the planar
    # hull of the projected points is the spherical hull
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    ex = np.cross(helper, z)
    ex /= np.linalg.norm(ex)
    ey = np.cross(z, ex)
    w = vecs @ z
    xy = np.column_stack([(vecs @ ex) / w, (vecs @ ey) / w])
    uniq, idx = np.unique(np.round(xy, 15), axis=0, return_index=True)
    if len(uniq) < 3:
        return vecs[np.sort(idx)]
    hull = ConvexHull(xy)  # 2-D hulls come out counter-clockwise in (ex, ey) = from outside
    return vecs[hull.vertices]


def polygon_centroid(vertices: np.ndarray) -> np.ndarray:
    """Centre of mass direction of a spherical convex polygon (Brock 1974; the formula
    lsst.sphgeom uses): the sum over edges of the unit edge normal times the edge angle."""
    v0 = np.roll(vertices, 1, axis=0)
    v1 = vertices
    cross = np.cross(v0, v1)
    s = np.linalg.norm(cross, axis=1)
    c = np.sum(v0 * v1, axis=1)
    ang = np.arctan2(s, c)
    with np.errstate(invalid="ignore", divide="ignore"):
        normals = np.where(s[:, None] > 0, cross / s[:, None], 0.0)
    cm = (normals * ang[:, None]).sum(axis=0)
    if len(vertices) < 3 or np.linalg.norm(cm) < 1e-15:
        cm = vertices.sum(axis=0)
    if cm @ vertices.sum(axis=0) < 0:  # clockwise input: the normals point inward
        cm = -cm
    return cm / np.linalg.norm(cm)


def bounding_circle(ra, dec) -> tuple[float, float, float]:
    """Bounding circle of points as lsst.sphgeom's ``ConvexPolygon.getBoundingCircle``:
    centre = centroid of the convex hull, radius = largest distance to a hull vertex.

    Returns
    -------
    ra, dec, radius : float
        Degrees.
    """
    vecs = radec_to_vec(np.ravel(ra), np.ravel(dec))
    hull = convex_hull_vertices(vecs)
    c = polygon_centroid(hull)
    chord2 = np.max(np.sum((hull - c) ** 2, axis=1))
    radius = np.degrees(2.0 * np.arcsin(min(np.sqrt(chord2) / 2.0, 1.0)))
    cra, cdec = vec_to_radec(c)
    return float(cra), float(cdec), float(radius)


def clip_polygon_to_box(xy: np.ndarray, xmin: float, ymin: float, xmax: float,
                        ymax: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a planar polygon ``(n, 2)`` to a rectangle.

    Returns the clipped polygon (possibly empty, shape ``(0, 2)``).
    """
    poly = [tuple(p) for p in np.asarray(xy, dtype=float)]
    for axis, bound, keep_greater in ((0, xmin, True), (0, xmax, False),
                                      (1, ymin, True), (1, ymax, False)):
        if not poly:
            break
        out = []
        for i, cur in enumerate(poly):
            prev = poly[i - 1]
            cin = cur[axis] >= bound if keep_greater else cur[axis] <= bound
            pin = prev[axis] >= bound if keep_greater else prev[axis] <= bound
            if cin != pin:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append((prev[0] + t * (cur[0] - prev[0]),
                            prev[1] + t * (cur[1] - prev[1])))
            if cin:
                out.append(cur)
        poly = out
    return np.array(poly, dtype=float).reshape(-1, 2)


def polygon_area(xy: np.ndarray) -> float:
    """Area of a planar polygon (shoelace; absolute value)."""
    if len(xy) < 3:
        return 0.0
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
