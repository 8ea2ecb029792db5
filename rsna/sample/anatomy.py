"""A simplified head for the synthetic sample: skull ellipsoids and a circle of Willis.

All coordinates are in millimetres in a head frame with the DICOM patient axes (LPS):
``+x`` toward the patient's left, ``+y`` posterior, ``+z`` superior. The origin is the
centre of the circle of Willis. The ``Right`` vessels are the ``Left`` ones mirrored at
``x = 0``, so a ``Left ...`` label always lies at ``x > 0``.

The geometry is not to scale. The anterior cerebral arteries and the communicating
arteries sit further apart than in a real brain, so that the 13 locations of the
challenge stay separable at the 2 mm voxels of the default pipeline.
"""

from dataclasses import dataclass

import numpy as np

from rsna.labels import LOCATION_COLUMNS


@dataclass(frozen=True)
class Vessel:
    """A vessel as a polyline of centre points ``(n, 3)`` in mm with one lumen radius."""

    name: str
    points_mm: tuple[tuple[float, float, float], ...]
    radius_mm: float


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid: centre and semi-axes ``(x, y, z)`` in mm."""

    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]


# Vessels of the left side; `_mirror` makes the right side.
_LEFT_VESSELS: tuple[Vessel, ...] = (
    Vessel(
        "ICA infraclinoid",
        ((17, 6, -42), (16, 2, -30), (16, -4, -20), (15, -8, -12), (14, -5, -6)),
        2.2,
    ),
    Vessel("ICA supraclinoid", ((14, -5, -6), (14, -2, -2), (14, 0, 2)), 2.0),
    Vessel("MCA M1", ((14, 0, 2), (24, -1, 3), (34, 0, 5), (42, 3, 9)), 1.6),
    Vessel("MCA M2 superior", ((42, 3, 9), (46, -3, 17), (50, -6, 28)), 1.1),
    Vessel("MCA M2 inferior", ((42, 3, 9), (50, 9, 14), (56, 16, 16)), 1.1),
    Vessel("ACA A1", ((14, 0, 2), (10, -8, 4), (6, -14, 5)), 1.3),
    Vessel("ACA A2", ((6, -14, 5), (6, -20, 12), (6, -26, 22), (6, -24, 36)), 1.2),
    Vessel("PCom", ((14, 1, 0), (13, 6, 0), (12, 12, 0)), 0.9),
    Vessel("PCA P1", ((0, 16, -2), (7, 14, -1), (12, 12, 0)), 1.3),
    Vessel("PCA P2", ((12, 12, 0), (20, 20, 2), (27, 30, 5), (30, 42, 9)), 1.1),
    Vessel("SCA", ((0, 17, -7), (8, 20, -8), (16, 26, -8), (22, 34, -6)), 0.9),
    Vessel("Vertebral", ((10, 30, -56), (6, 26, -46), (0, 20, -38)), 1.6),
)
_MIDLINE_VESSELS: tuple[Vessel, ...] = (
    Vessel("Basilar", ((0, 20, -38), (0, 18, -20), (0, 16, -2)), 1.7),
    Vessel("ACom", ((6, -14, 5), (-6, -14, 5)), 1.0),
)

# Aneurysm sites per location: (vessel name without side, range of the fraction of the
# polyline's length). "Other Posterior Circulation" draws one of its entries.
_LOCATION_SITES: dict[str, tuple[tuple[str, float, float], ...]] = {
    "Infraclinoid Internal Carotid Artery": (("ICA infraclinoid", 0.45, 0.8),),
    "Supraclinoid Internal Carotid Artery": (("ICA supraclinoid", 0.2, 0.7),),
    "Middle Cerebral Artery": (("MCA M1", 0.75, 1.0),),
    "Anterior Communicating Artery": (("ACom", 0.4, 0.6),),
    "Anterior Cerebral Artery": (("ACA A2", 0.2, 0.55),),
    "Posterior Communicating Artery": (("PCom", 0.2, 0.6),),
    "Basilar Tip": (("Basilar", 0.95, 1.0),),
    "Other Posterior Circulation": (("PCA P2", 0.3, 0.7), ("SCA", 0.4, 0.8)),
}

# Tissue compartments. The brain and the skull base are soft tissue, the shell between
# the brain and the skull ellipsoid is bone, the shell outside it is scalp.
BRAIN = Ellipsoid((0.0, 4.0, 14.0), (64.0, 80.0, 60.0))
SKULL_THICKNESS_MM = 7.0
SCALP_THICKNESS_MM = 4.0
SKULL_BASE = Ellipsoid((0.0, 14.0, -52.0), (40.0, 42.0, 34.0))


def _mirror(vessel: Vessel) -> Vessel:
    points = tuple((-x, y, z) for x, y, z in vessel.points_mm)
    return Vessel(vessel.name, points, vessel.radius_mm)


def vessels_by_side() -> dict[str, Vessel]:
    """Return every vessel keyed ``"Left NAME"``, ``"Right NAME"`` or ``NAME`` (midline)."""
    vessels = {f"Left {vessel.name}": vessel for vessel in _LEFT_VESSELS}
    vessels.update({f"Right {vessel.name}": _mirror(vessel) for vessel in _LEFT_VESSELS})
    vessels.update({vessel.name: vessel for vessel in _MIDLINE_VESSELS})
    return vessels


def point_along(points_mm: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the point at ``fraction`` of a polyline's length and the unit tangent there.

    ``points_mm`` has shape ``(n, 3)``; both results have shape ``(3,)``.
    """
    steps = np.diff(points_mm, axis=0)
    lengths = np.linalg.norm(steps, axis=1)
    target = fraction * lengths.sum()
    cumulative = np.concatenate([[0.0], np.cumsum(lengths)])
    index = int(np.clip(np.searchsorted(cumulative, target, side="right") - 1, 0, len(steps) - 1))
    local = (target - cumulative[index]) / lengths[index]
    tangent = steps[index] / lengths[index]
    return points_mm[index] + local * steps[index], tangent


def location_site(location: str, rng: np.random.Generator) -> tuple[Vessel, float]:
    """Draw the vessel and the fraction of its length where an aneurysm of ``location`` sits.

    ``location`` is one of :data:`rsna.labels.LOCATION_COLUMNS`.
    """
    if location not in LOCATION_COLUMNS:
        raise ValueError(f"unknown location {location!r}; expected one of {LOCATION_COLUMNS}")
    side, _, site_name = location.partition(" ")
    if side not in ("Left", "Right"):
        side, site_name = "", location
    sites = _LOCATION_SITES[site_name]
    vessel_name, low, high = sites[int(rng.integers(len(sites)))]

    vessels = vessels_by_side()
    if f"Left {vessel_name}" in vessels:
        side = side or ("Left" if rng.random() < 0.5 else "Right")
        vessel = vessels[f"{side} {vessel_name}"]
    else:
        vessel = vessels[vessel_name]
    return vessel, float(rng.uniform(low, high))


@dataclass(frozen=True)
class Aneurysm:
    """A saccular aneurysm: a sphere of ``radius_mm`` centred at ``centre_mm`` (head frame)."""

    location: str
    centre_mm: tuple[float, float, float]
    radius_mm: float


def place_aneurysm(location: str, rng: np.random.Generator) -> Aneurysm:
    """Draw an aneurysm of ``location`` bulging out of the wall of its vessel.

    The sphere's centre lies off the vessel's centre line, in a random direction across
    the vessel, by the lumen radius plus half the sphere's radius. The sphere and the
    lumen then overlap as a saccular aneurysm and its parent artery do.
    """
    vessel, fraction = location_site(location, rng)
    anchor, tangent = point_along(np.asarray(vessel.points_mm, dtype=float), fraction)

    direction = rng.standard_normal(3)
    direction -= direction.dot(tangent) * tangent
    direction /= np.linalg.norm(direction)

    radius_mm = float(rng.uniform(3.0, 4.5))
    centre = anchor + direction * (vessel.radius_mm + 0.5 * radius_mm)
    return Aneurysm(location, tuple(float(value) for value in centre), radius_mm)
