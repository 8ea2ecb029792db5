"""Builders of tiny synthetic DICOM series for tests, written with pydicom.

Geometry follows DICOM: slice k of a series lies at ``first_position_mm + offsets[k] *
normal`` with ``normal = row cosine x column cosine``, and pixel (row i, column j) of a
slice lies at ``position + j * column_spacing * row_cosine + i * row_spacing *
column_cosine``, where ``pixel_spacing_mm = (row_spacing, column_spacing)`` as in
PixelSpacing. Stored pixel values are given as integer arrays ``(slices, rows, columns)``.

Typical use::

    files = write_series(tmp_path / "ct", stored=values, spacing_mm=(1.0, 0.5, 0.5))
    volume = read_series(files.folder)
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
OMIT = object()  # pass as a tag value to leave the tag out


@dataclass(frozen=True)
class SeriesFiles:
    """What a builder wrote: the folder, file paths and per-slice facts in slice order.

    ``positions_mm`` are ImagePositionPatient (x, y, z) of the slices in the order of
    ``stored`` (not in file order); ``sop_instance_uids`` and ``paths`` follow the same order.
    """

    folder: Path
    series_uid: str
    paths: tuple[Path, ...]
    sop_instance_uids: tuple[str, ...]
    positions_mm: tuple[tuple[float, float, float], ...]


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Return row cosine x column cosine of ImageOrientationPatient."""
    return np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))


def pixel_position(
    position_mm: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing_mm: Sequence[float],
    *,
    row: float,
    column: float,
) -> np.ndarray:
    """Return the LPS position (x, y, z) of pixel (row, column) of a slice."""
    row_cosine = np.asarray(orientation[:3], float)
    column_cosine = np.asarray(orientation[3:], float)
    return (
        np.asarray(position_mm, float)
        + column * pixel_spacing_mm[1] * row_cosine
        + row * pixel_spacing_mm[0] * column_cosine
    )


def _file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = UID(transfer_syntax)
    return meta


def _set_pixels(dataset: Dataset, stored: np.ndarray, *, bits_stored: int | None) -> None:
    signed = np.issubdtype(stored.dtype, np.signedinteger)
    dataset.SamplesPerPixel = 1
    dataset.BitsAllocated = 16
    dataset.BitsStored = bits_stored or 16
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 1 if signed else 0
    values = stored.astype("<i2" if signed else "<u2")
    dataset.Rows, dataset.Columns = values.shape[-2:]
    dataset.PixelData = values.tobytes()


def _apply_tags(dataset: Dataset, tags: dict | None) -> None:
    for keyword, value in (tags or {}).items():
        if value is OMIT:
            if keyword in dataset:
                delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)


def save(
    dataset: FileDataset, path: str | Path, transfer_syntax: str = ExplicitVRLittleEndian
) -> None:
    """Write ``dataset`` to ``path`` in ``transfer_syntax``.

    Native little-endian (explicit or implicit VR), RLE Lossless (pydicom's own encoder)
    or any other syntax pydicom can encode with the installed plugins.
    """
    syntax = UID(transfer_syntax)
    if syntax == RLELossless:
        dataset.compress(RLELossless, encoding_plugin="pydicom")
    elif syntax.is_compressed:
        dataset.compress(syntax)
    dataset.file_meta.TransferSyntaxUID = syntax
    dataset.save_as(
        path,
        implicit_vr=syntax == ImplicitVRLittleEndian,
        little_endian=True,
        enforce_file_format=True,
    )


def build_slice(
    *,
    stored: np.ndarray,
    position_mm: Sequence[float],
    orientation: Sequence[float] = AXIAL,
    pixel_spacing_mm: Sequence[float] = (0.5, 0.5),
    modality: str = "CT",
    series_uid: str,
    study_uid: str,
    frame_of_reference_uid: str,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    rescale_slope: float | None = 1.0,
    rescale_intercept: float | None = -1024.0,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    sop_class_uid: str | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    tags: dict | None = None,
) -> FileDataset:
    """Return one single-frame image as a FileDataset (not yet saved).

    ``stored`` is a (rows, columns) integer array; a signed dtype gives
    PixelRepresentation 1. ``rescale_slope`` or ``rescale_intercept`` None omits the tag.
    ``tags`` sets (or, with the value ``OMIT``, removes) any other keyword. The data set
    is native (Explicit VR Little Endian) until :func:`save` writes it.
    """
    if sop_class_uid is None:
        sop_class_uid = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    sop_instance_uid = sop_instance_uid or generate_uid()
    dataset = FileDataset(
        "",
        Dataset(),
        file_meta=_file_meta(sop_class_uid, sop_instance_uid, ExplicitVRLittleEndian),
        preamble=b"\0" * 128,
    )
    dataset.SOPClassUID = sop_class_uid
    dataset.SOPInstanceUID = sop_instance_uid
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = series_uid
    dataset.FrameOfReferenceUID = frame_of_reference_uid
    dataset.Modality = modality
    dataset.PatientID = "TEST-PATIENT"
    dataset.ImageType = list(image_type)
    dataset.SeriesNumber = 1
    dataset.InstanceNumber = instance_number
    dataset.ImagePositionPatient = [float(v) for v in position_mm]
    dataset.ImageOrientationPatient = [float(v) for v in orientation]
    dataset.PixelSpacing = [float(v) for v in pixel_spacing_mm]
    dataset.PhotometricInterpretation = photometric
    if rescale_slope is not None:
        dataset.RescaleSlope = rescale_slope
    if rescale_intercept is not None:
        dataset.RescaleIntercept = rescale_intercept
    _set_pixels(dataset, stored, bits_stored=bits_stored)
    _apply_tags(dataset, tags)
    return dataset


def write_series(
    folder: str | Path,
    *,
    stored: np.ndarray,
    spacing_mm: Sequence[float] = (1.0, 0.5, 0.5),
    orientation: Sequence[float] = AXIAL,
    first_position_mm: Sequence[float] = (-10.0, -20.0, 30.0),
    offsets_mm: Sequence[float] | None = None,
    modality: str = "CT",
    rescale_slope: float | None = 1.0,
    rescale_intercept: float | None = -1024.0,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = ExplicitVRLittleEndian,
    series_uid: str | None = None,
    instance_numbers: Sequence[int] | None = None,
    file_names: Sequence[str] | None = None,
    tags: dict | None = None,
    slice_tags: Sequence[dict] | None = None,
    shear_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> SeriesFiles:
    """Write ``stored`` (slices, rows, columns) as one single-frame file per slice.

    ``spacing_mm`` is (slice gap, row spacing, column spacing). Slice k lies at
    ``first_position_mm + offsets_mm[k] * normal + k * shear_mm`` where ``offsets_mm``
    defaults to ``k * spacing_mm[0]``; a non-zero ``shear_mm`` imitates a gantry tilt.
    ``instance_numbers`` defaults to 1..n in slice order; ``file_names`` defaults to
    ``<SOPInstanceUID>.dcm`` as in the Kaggle layout. ``tags`` applies to every file and
    ``slice_tags[k]`` to slice k only.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = stored.shape[0]
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    normal = slice_normal(orientation)
    offsets = [k * spacing_mm[0] for k in range(count)] if offsets_mm is None else list(offsets_mm)
    paths, uids, positions = [], [], []
    for k in range(count):
        position = (
            np.asarray(first_position_mm, float)
            + offsets[k] * normal
            + k * np.asarray(shear_mm, float)
        )
        sop_uid = generate_uid()
        dataset = build_slice(
            stored=stored[k],
            position_mm=position,
            orientation=orientation,
            pixel_spacing_mm=spacing_mm[1:],
            modality=modality,
            series_uid=series_uid,
            study_uid=study_uid,
            frame_of_reference_uid=frame_uid,
            sop_instance_uid=sop_uid,
            instance_number=instance_numbers[k] if instance_numbers is not None else k + 1,
            rescale_slope=rescale_slope,
            rescale_intercept=rescale_intercept,
            bits_stored=bits_stored,
            photometric=photometric,
            tags={**(tags or {}), **(slice_tags[k] if slice_tags else {})},
        )
        path = folder / (file_names[k] if file_names is not None else f"{sop_uid}.dcm")
        save(dataset, path, transfer_syntax)
        paths.append(path)
        uids.append(sop_uid)
        positions.append(tuple(float(v) for v in position))
    return SeriesFiles(folder, series_uid, tuple(paths), tuple(uids), tuple(positions))


def write_enhanced(
    path: str | Path,
    *,
    stored: np.ndarray,
    spacing_mm: Sequence[float] = (1.0, 0.5, 0.5),
    orientation: Sequence[float] = AXIAL,
    first_position_mm: Sequence[float] = (-10.0, -20.0, 30.0),
    frame_order: Sequence[int] | None = None,
    modality: str = "MR",
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    per_frame_rescale: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
    series_uid: str | None = None,
    tags: dict | None = None,
) -> SeriesFiles:
    """Write ``stored`` (slices, rows, columns) as one Enhanced CT or MR multi-frame file.

    Frame f of the file contains slice ``frame_order[f]`` (default: slice order), with its
    position in PerFrameFunctionalGroupsSequence > PlanePositionSequence; orientation and
    pixel measures go in SharedFunctionalGroupsSequence, and the rescale in the shared
    groups or, with ``per_frame_rescale``, per frame. Top-level ImagePositionPatient,
    ImageOrientationPatient, PixelSpacing and rescale tags are absent, as in the real
    Enhanced MR files. ``positions_mm`` of the result is in slice order.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = stored.shape[0]
    order = list(frame_order) if frame_order is not None else list(range(count))
    normal = slice_normal(orientation)
    positions = [
        np.asarray(first_position_mm, float) + k * spacing_mm[0] * normal for k in range(count)
    ]
    sop_class = ENHANCED_MR_IMAGE_STORAGE if modality == "MR" else ENHANCED_CT_IMAGE_STORAGE
    sop_uid = generate_uid()
    series_uid = series_uid or generate_uid()
    dataset = FileDataset(
        "",
        Dataset(),
        file_meta=_file_meta(sop_class, sop_uid, ExplicitVRLittleEndian),
        preamble=b"\0" * 128,
    )
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = sop_uid
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = series_uid
    dataset.FrameOfReferenceUID = generate_uid()
    dataset.Modality = modality
    dataset.PatientID = "TEST-PATIENT"
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    dataset.SeriesNumber = 1
    dataset.InstanceNumber = 1
    dataset.NumberOfFrames = count
    dataset.PhotometricInterpretation = "MONOCHROME2"

    shared = Dataset()
    orientation_item = Dataset()
    orientation_item.ImageOrientationPatient = [float(v) for v in orientation]
    shared.PlaneOrientationSequence = DicomSequence([orientation_item])
    measures = Dataset()
    measures.PixelSpacing = [float(v) for v in spacing_mm[1:]]
    measures.SliceThickness = float(spacing_mm[0])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    if not per_frame_rescale:
        shared.PixelValueTransformationSequence = DicomSequence(
            [_rescale_item(rescale_slope, rescale_intercept)]
        )
    dataset.SharedFunctionalGroupsSequence = DicomSequence([shared])

    per_frame = []
    for frame, slice_index in enumerate(order):
        item = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = [float(v) for v in positions[slice_index]]
        item.PlanePositionSequence = DicomSequence([plane])
        content = Dataset()
        content.InStackPositionNumber = slice_index + 1
        content.TemporalPositionIndex = 1
        item.FrameContentSequence = DicomSequence([content])
        if per_frame_rescale:
            item.PixelValueTransformationSequence = DicomSequence(
                [_rescale_item(rescale_slope * (1 + frame), rescale_intercept + frame)]
            )
        per_frame.append(item)
    dataset.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    _set_pixels(dataset, stored[order], bits_stored=None)
    _apply_tags(dataset, tags)
    save(dataset, path, transfer_syntax)
    return SeriesFiles(
        path.parent,
        series_uid,
        (path,),
        (sop_uid,),
        tuple(tuple(float(v) for v in p) for p in positions),
    )


def _rescale_item(slope: float, intercept: float) -> Dataset:
    item = Dataset()
    item.RescaleSlope = slope
    item.RescaleIntercept = intercept
    item.RescaleType = "US"
    return item


def head_ct_values(shape: Sequence[int], *, seed: int = 0) -> np.ndarray:
    """Return stored values (HU + 1024, uint16) of a head-CT-like phantom of ``shape`` (z, y, x).

    Air (stored 0, -1024 HU) around an ellipsoidal head of brain tissue (about 40 HU)
    with a skull shell (about 1000 HU) and a bright vessel (300 HU), so air is present
    on every slice, as in real head CT.
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, size) for size in shape], indexing="ij")
    radius = np.sqrt((z / 1.3) ** 2 + (y / 0.8) ** 2 + (x / 0.7) ** 2)
    hu = np.full(shape, -1024.0)
    hu[radius < 1.0] = 1000.0
    hu[radius < 0.9] = 40.0
    hu[(np.abs(x) < 0.05) & (np.abs(y) < 0.05) & (radius < 0.9)] = 300.0
    hu += rng.normal(0.0, 5.0, size=shape)
    return np.clip(np.round(hu + 1024), 0, 4095).astype(np.uint16)
