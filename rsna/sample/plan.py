"""The plan of a synthetic dataset: patients, their aneurysms and every series' acquisition.

Every value is drawn from generators seeded with the dataset seed, so one seed always
gives the same plan, whatever the number of worker processes that render it later.
Feature mixes (modality, plane, multi-frame, RLE) are set by quotas rather than by
independent draws, so even a dataset of a dozen series contains each of them.
"""

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
from pydicom.uid import generate_uid

from rsna.labels import LOCATION_COLUMNS, MODALITIES
from rsna.sample.anatomy import Aneurysm, place_aneurysm
from rsna.sample.render import Contrast, Geometry, HeadPose

logger = logging.getLogger(__name__)

# Share of series per train.csv modality, in MODALITIES order (the real data has about
# 42% CTA, 29% MRA, 23% T2 and 7% T1post).
MODALITY_SHARES = (0.4, 0.3, 0.2, 0.1)
PLANES = ("axial", "coronal", "sagittal")
PLANE_SHARES = (0.76, 0.12, 0.12)
# Share of CT and of MR series written as one Enhanced multi-frame file.
ENHANCED_CT_SHARE = 0.1
ENHANCED_MR_SHARE = 0.2
RLE_SHARE = 0.5
# Share of patients with aneurysms and how many locations each positive patient has,
# far above the real data's prevalence. With 300 series (seed 2025), the 15% test split
# contains at least one positive of every location for each split seed from 0 to 59, so
# all 14 test AUCs are defined. Most patients have one series, so the test split has
# many patients and its per-location counts vary less.
POSITIVE_PATIENT_SHARE = 0.6
LOCATIONS_PER_POSITIVE_PATIENT = (3, 4)
SERIES_PER_PATIENT = (1, 2, 3)
SERIES_PER_PATIENT_PROBABILITIES = (0.6, 0.3, 0.1)
MATRIX_SIZES = (96, 112, 128)
# Series ImageOrientationPatient halves (row cosine, column cosine) per plane.
PLANE_COSINES = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}
# Extent in mm covered along the slice normal per plane: (low, high).
PLANE_COVERAGE_MM = {"axial": (100.0, 150.0), "coronal": (140.0, 180.0), "sagittal": (120.0, 160.0)}
# Head-frame point the field of view is centred on: above the circle of Willis, so the
# vessels and the brain above them stay inside a 96 mm crop along z.
VIEW_CENTRE_MM = (0.0, 2.0, 8.0)
UID_NAMESPACE = "rsna-sample"


@dataclass(frozen=True)
class Patient:
    """A synthetic patient.

    PatientName and PatientBirthDate go into the headers only, so that tests can check
    that the manifest leaves them out.
    """

    PatientID: str
    PatientName: str
    PatientBirthDate: str
    PatientAge: int
    PatientSex: str
    aneurysms: tuple[Aneurysm, ...]
    scale: float


@dataclass(frozen=True)
class SeriesPlan:
    """Everything needed to render and write one series, and its rows of the CSV files."""

    index: int
    SeriesInstanceUID: str
    StudyInstanceUID: str
    FrameOfReferenceUID: str
    patient: Patient
    modality: str
    plane: str
    enhanced: bool
    rle: bool
    reversed_order: bool
    geometry: Geometry
    pose: HeadPose
    contrast: Contrast
    ct_signed: bool
    study_date: str
    study_time: str
    seed: int

    @property
    def file_count(self) -> int:
        """Number of DICOM files: one for an Enhanced series, else one per slice."""
        return 1 if self.enhanced else self.geometry.shape[0]

    def slice_of_frame(self, frame: int) -> int:
        """Return the slice index ``k`` along the normal stored in file or frame ``frame``."""
        return self.geometry.shape[0] - 1 - frame if self.reversed_order else frame

    def sop_instance_uid(self, file_index: int) -> str:
        """Return the SOPInstanceUID of file ``file_index``, derived from the dataset seed."""
        return make_uid(self.seed, "instance", self.index, file_index)


def make_uid(seed: int, *parts: object) -> str:
    """Return a valid DICOM UID that depends only on ``seed`` and ``parts``."""
    return generate_uid(entropy_srcs=[UID_NAMESPACE, str(seed), *map(str, parts)])


def quota_assignment(rng: np.random.Generator, count: int, shares: tuple[float, ...]) -> np.ndarray:
    """Return ``count`` category indices in random order with counts proportional to ``shares``.

    Counts follow the largest-remainder rule, and every category gets at least one item
    when ``count`` is at least the number of categories.
    """
    shares_array = np.asarray(shares, dtype=float) / sum(shares)
    exact = shares_array * count
    counts = np.floor(exact).astype(int)
    if count >= len(shares):
        counts = np.maximum(counts, 1)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    position = 0
    while counts.sum() < count:
        counts[order[position % len(order)]] += 1
        position += 1
    while counts.sum() > count:
        counts[int(np.argmax(counts))] -= 1
    labels = np.repeat(np.arange(len(shares)), counts)
    return rng.permutation(labels)


def plan_dataset(
    *, series: int, seed: int, matrix: int | None = None, slices: int | None = None
) -> list[SeriesPlan]:
    """Return the plans of ``series`` series in train.csv order.

    ``matrix`` (Rows = Columns) and ``slices`` fix the grid size for quick test data; the
    field of view stays the same, so smaller grids have coarser spacing.
    """
    rng = np.random.default_rng([seed, 0])
    patients = _plan_patients(rng, series, seed)
    patient_of_series = [patient for patient, count in patients for _ in range(count)]

    modalities = quota_assignment(rng, series, MODALITY_SHARES)
    planes = quota_assignment(rng, series, PLANE_SHARES)
    enhanced = _enhanced_flags(rng, modalities)
    rle = quota_assignment(rng, series, (1.0 - RLE_SHARE, RLE_SHARE)) == 1

    plans = []
    for index in range(series):
        plans.append(
            _plan_series(
                index=index,
                seed=seed,
                patient=patient_of_series[index],
                modality=MODALITIES[modalities[index]],
                plane=PLANES[planes[index]],
                enhanced=bool(enhanced[index]),
                rle=bool(rle[index]),
                matrix=matrix,
                slices=slices,
            )
        )
    return plans


def _enhanced_flags(rng: np.random.Generator, modalities: np.ndarray) -> np.ndarray:
    """Return which series become one Enhanced multi-frame file, by quota per CT and MR."""
    flags = np.zeros(len(modalities), dtype=bool)
    is_ct = modalities == MODALITIES.index("CTA")
    for members, share in ((is_ct, ENHANCED_CT_SHARE), (~is_ct, ENHANCED_MR_SHARE)):
        indices = np.flatnonzero(members)
        if len(indices) >= 2:
            flags[indices] = quota_assignment(rng, len(indices), (1.0 - share, share)) == 1
    return flags


def _patient_series_counts(rng: np.random.Generator, series: int) -> list[int]:
    """Return the number of series of each patient, summing to ``series``."""
    counts: list[int] = []
    while sum(counts) < series:
        counts.append(int(rng.choice(SERIES_PER_PATIENT, p=SERIES_PER_PATIENT_PROBABILITIES)))
    if counts:
        counts[-1] -= sum(counts) - series
    return counts


def _choose_locations(
    rng: np.random.Generator, positive: np.ndarray, counts: list[int]
) -> list[tuple[str, ...]]:
    """Return each patient's aneurysm locations: 3 or 4 for a positive patient, else none.

    Locations are drawn among the least used so far (counted per series), with random
    tie-breaks, so every location gets about the same number of positive series.
    """
    used = np.zeros(len(LOCATION_COLUMNS))
    chosen: list[tuple[str, ...]] = []
    for is_positive, count in zip(positive, counts, strict=True):
        if not is_positive:
            chosen.append(())
            continue
        how_many = int(rng.choice(LOCATIONS_PER_POSITIVE_PATIENT))
        picked = np.sort(np.argsort(used + rng.uniform(0.0, 3.0, len(used)))[:how_many])
        used[picked] += count
        chosen.append(tuple(LOCATION_COLUMNS[i] for i in picked))
    return chosen


def _plan_patients(rng: np.random.Generator, series: int, seed: int) -> list[tuple[Patient, int]]:
    """Return each patient with its number of series."""
    counts = _patient_series_counts(rng, series)
    if len(counts) >= 2:
        positive = (
            quota_assignment(rng, len(counts), (1 - POSITIVE_PATIENT_SHARE, POSITIVE_PATIENT_SHARE))
            == 1
        )
    else:
        positive = np.ones(len(counts), dtype=bool)
    locations = _choose_locations(rng, positive, counts)
    return [
        (_make_patient(seed, number, patient_locations), count)
        for number, (patient_locations, count) in enumerate(zip(locations, counts, strict=True))
    ]


def _make_patient(seed: int, number: int, locations: tuple[str, ...]) -> Patient:
    rng = np.random.default_rng([seed, 1, number])
    token = hashlib.sha256(f"{UID_NAMESPACE}:{seed}:{number}".encode()).hexdigest()
    age = int(rng.integers(25, 86))
    month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    return Patient(
        PatientID=f"ID_{token[:12]}",
        PatientName=f"Synthetic^Person{token[12:20].upper()}",
        PatientBirthDate=f"{2020 - age:04d}{month:02d}{day:02d}",
        PatientAge=age,
        PatientSex=str(rng.choice(("Female", "Male"))),
        aneurysms=tuple(place_aneurysm(location, rng) for location in locations),
        scale=float(rng.uniform(0.92, 1.08)),
    )


def _rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Return the rotation about z (yaw), then y (roll), then x (pitch), angles in degrees."""
    yaw, pitch, roll = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    about_z = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    about_y = np.array(
        [[np.cos(roll), 0, np.sin(roll)], [0, 1, 0], [-np.sin(roll), 0, np.cos(roll)]]
    )
    about_x = np.array(
        [[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]]
    )
    return about_z @ about_y @ about_x


def _draw_pose(rng: np.random.Generator, scale: float) -> HeadPose:
    rotation = _rotation(rng.uniform(-6, 6), rng.uniform(-8, 8), rng.uniform(-4, 4))
    # Table positions differ between scanners; z is where the table put the head.
    translation = (rng.uniform(-15, 15), rng.uniform(-20, 20), rng.uniform(-150, 50))
    return HeadPose(
        rotation=tuple(tuple(float(value) for value in row) for row in rotation),
        scale=scale,
        translation_mm=tuple(round(float(value), 2) for value in translation),
    )


def _draw_geometry(
    rng: np.random.Generator, plane: str, pose: HeadPose, matrix: int | None, slices: int | None
) -> Geometry:
    """Draw a grid of 40 to 90 slices of 96 to 128 pixels over a 190 to 230 mm field of view."""
    rows = matrix or int(rng.choice(MATRIX_SIZES))
    columns = matrix or (rows if rng.random() < 0.7 else int(rng.choice(MATRIX_SIZES)))
    slice_count = slices or int(rng.integers(40, 91))
    gap_mm = round(rng.uniform(*PLANE_COVERAGE_MM[plane]) / slice_count, 2)
    pixel_mm = round(rng.uniform(190.0, 230.0) / min(rows, columns), 4)
    row_cosine, column_cosine = PLANE_COSINES[plane]

    grid = Geometry(
        (slice_count, rows, columns),
        (gap_mm, pixel_mm, pixel_mm),
        row_cosine,
        column_cosine,
        (0.0, 0.0, 0.0),
    )
    centre = pose.head_to_patient(np.asarray(VIEW_CENTRE_MM) + rng.uniform(-4.0, 4.0, 3))
    half_extent = grid.axes_mm() @ ((np.asarray(grid.shape) - 1) / 2.0)
    origin = tuple(round(float(value), 4) for value in centre - half_extent)
    return Geometry(grid.shape, grid.spacing_mm, row_cosine, column_cosine, origin)


def _draw_contrast(rng: np.random.Generator, modality: str) -> Contrast:
    """Draw tissue intensities: HU for CTA, scanner units scaled by a random gain for MR.

    Vessels are bright in every modality, as in contrast-enhanced CT and T1 and in
    time-of-flight MRA. Aneurysms are 18 to 30% brighter than their vessel.
    """
    brightening = rng.uniform(1.18, 1.3)
    if modality == "CTA":
        vessel = rng.uniform(280.0, 420.0)
        return Contrast(
            air=-1000.0,
            scalp=rng.uniform(20.0, 60.0),
            bone=rng.uniform(900.0, 1400.0),
            brain=rng.uniform(28.0, 42.0),
            vessel=vessel,
            aneurysm=min(vessel * brightening, 590.0),
            noise_sigma=rng.uniform(6.0, 12.0),
        )
    # NOTE: real T2 vessels are dark flow voids. Here they are bright as on the other
    # sequences, so the sample does not exercise learning of that contrast.
    # The scalp (fat) is the brightest MR tissue and fills a few percent of the field of
    # view. The 99th percentile that MR scaling maps to 1 then lies above the vessels and
    # aneurysms, so clipping does not merge them.
    scalp, bone, brain, vessel_low, vessel_high, noise_sigma = {
        "MRA": (1300.0, 40.0, 210.0, 700.0, 950.0, 14.0),
        "MRI T2": (1300.0, 30.0, 430.0, 800.0, 950.0, 15.0),
        "MRI T1post": (1250.0, 40.0, 400.0, 780.0, 900.0, 12.0),
    }[modality]
    gain = rng.uniform(0.7, 1.4)
    vessel = rng.uniform(vessel_low, vessel_high)
    return Contrast(
        air=5.0 * gain,
        scalp=scalp * gain,
        bone=bone * gain,
        brain=brain * gain,
        vessel=vessel * gain,
        aneurysm=vessel * brightening * gain,
        noise_sigma=noise_sigma * gain,
    )


def _plan_series(
    *,
    index: int,
    seed: int,
    patient: Patient,
    modality: str,
    plane: str,
    enhanced: bool,
    rle: bool,
    matrix: int | None,
    slices: int | None,
) -> SeriesPlan:
    rng = np.random.default_rng([seed, 2, index])
    pose = _draw_pose(rng, patient.scale)
    geometry = _draw_geometry(rng, plane, pose, matrix, slices)
    study_day = np.datetime64("2020-01-01") + int(rng.integers(0, 365))
    return SeriesPlan(
        index=index,
        SeriesInstanceUID=make_uid(seed, "series", index),
        StudyInstanceUID=make_uid(seed, "study", index),
        FrameOfReferenceUID=make_uid(seed, "frame-of-reference", index),
        patient=patient,
        modality=modality,
        plane=plane,
        enhanced=enhanced,
        rle=rle,
        reversed_order=bool(rng.random() < 0.5),
        geometry=geometry,
        pose=pose,
        contrast=_draw_contrast(rng, modality),
        ct_signed=bool(rng.random() < 0.35),
        study_date=str(study_day).replace("-", ""),
        study_time="{:02d}{:02d}{:02d}".format(
            *(int(rng.integers(low, high)) for low, high in ((7, 19), (0, 60), (0, 60)))
        ),
        seed=seed,
    )
