"""Writing planned series as DICOM files and the dataset's two CSV files.

Single-frame series use the CT Image and MR Image storage classes, one file per slice
(PS3.3 A.3 and A.4). Enhanced series are one Enhanced CT or Enhanced MR Image file whose
geometry sits only in the functional groups (PS3.3 C.7.6.16), as in the real data.
Files are named ``<SOPInstanceUID>.dcm`` and written in an order unrelated to space when
``reversed_order`` is set, so readers must sort by ImagePositionPatient.
"""

import csv
import logging
import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
)

from rsna.labels import LABEL_COLUMNS, LOCALIZER_CSV_COLUMNS, LOCATION_COLUMNS, TRAIN_CSV_COLUMNS
from rsna.sample.plan import SeriesPlan, make_uid
from rsna.sample.render import render_volume

logger = logging.getLogger(__name__)

# Fixed so that files do not depend on the pydicom version that wrote them.
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.1"
IMPLEMENTATION_VERSION_NAME = "RSNA_SAMPLE_1"
# pylibjpeg-rle encodes about five times faster than pydicom's pure Python encoder, and
# pinning one encoder keeps the compressed bytes identical between machines.
RLE_ENCODING_PLUGIN = "pylibjpeg"
MR_MAX_STORED = 4095
# Made-up values that real headers carry and the manifest must never copy.
INSTITUTION_NAME = "Synthetic General Hospital"
PHYSICIAN_NAME = "Example^Referrer"

# Acquisition headers per train.csv modality; "{plane}" takes AX, COR or SAG.
_MODALITY_HEADERS: dict[str, dict[str, object]] = {
    "CTA": {"SeriesDescription": "CTA HEAD {plane}", "ContrastBolusAgent": "IOMEPROL 350"},
    "MRA": {
        "SeriesDescription": "TOF 3D MRA {plane}",
        "ScanningSequence": "GR",
        "SequenceVariant": "SP",
        "MRAcquisitionType": "3D",
        "RepetitionTime": "23",
        "EchoTime": "3.45",
        "FlipAngle": "18",
        "AngioFlag": "Y",
    },
    "MRI T2": {
        "SeriesDescription": "T2 TSE {plane}",
        "ScanningSequence": "SE",
        "SequenceVariant": "SK",
        "MRAcquisitionType": "2D",
        "RepetitionTime": "5000",
        "EchoTime": "95",
        "FlipAngle": "150",
        "AngioFlag": "N",
    },
    "MRI T1post": {
        "SeriesDescription": "T1 MPRAGE POST GD {plane}",
        "ScanningSequence": "GR\\IR",
        "SequenceVariant": "SK\\SP\\MP",
        "MRAcquisitionType": "3D",
        "RepetitionTime": "2000",
        "EchoTime": "2.9",
        "FlipAngle": "9",
        "AngioFlag": "N",
        "ContrastBolusAgent": "GADOBUTROL",
    },
}
# AcquisitionContrast of Enhanced MR (PS3.3 C.8.13.1.1.1).
_ACQUISITION_CONTRAST = {"MRA": "TOF", "MRI T2": "T2", "MRI T1post": "T1"}
# Enhanced MR keeps these in functional groups or leaves them out (PS3.3 C.8.13).
_ENHANCED_MR_MOVED = frozenset(
    ("RepetitionTime", "EchoTime", "FlipAngle", "ScanningSequence", "SequenceVariant", "AngioFlag")
)
_PLANE_ABBREVIATIONS = {"axial": "AX", "coronal": "COR", "sagittal": "SAG"}


def decimal_string(value: float) -> str:
    """Format ``value`` as a DICOM DS of at most 16 characters, to 0.1 micrometre."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def stored_values(plan: SeriesPlan, volume: np.ndarray) -> np.ndarray:
    """Return the stored pixel values of ``volume`` (HU for CT, scanner units for MR).

    CT is stored through the modality LUT of :func:`ct_rescale` (PS3.3 C.11.1): int16
    with intercept 0, or 12-bit unsigned with intercept -1024. MR is 12-bit unsigned.
    """
    if plan.modality != "CTA":
        return np.clip(np.rint(volume), 0, MR_MAX_STORED).astype(np.uint16)
    slope, intercept, signed = ct_rescale(plan)
    stored = np.rint((volume - intercept) / slope)
    if signed:
        return np.clip(stored, -32768, 32767).astype(np.int16)
    return np.clip(stored, 0, 4095).astype(np.uint16)


def ct_rescale(plan: SeriesPlan) -> tuple[float, float, bool]:
    """Return ``(RescaleSlope, RescaleIntercept, signed)`` of a CT series."""
    return (1.0, 0.0, True) if plan.ct_signed else (1.0, -1024.0, False)


def write_series(plan: SeriesPlan, series_root: Path, noise: float) -> int:
    """Render ``plan`` and write its files under ``series_root/<SeriesInstanceUID>``.

    Returns the number of files written.
    """
    rng = np.random.default_rng([plan.seed, 3, plan.index])
    aneurysms = plan.patient.aneurysms
    volume = render_volume(plan.geometry, plan.pose, plan.contrast, aneurysms, rng, noise=noise)
    order = [plan.slice_of_frame(frame) for frame in range(plan.geometry.shape[0])]
    frames = stored_values(plan, volume)[order]

    folder = series_root / plan.SeriesInstanceUID
    folder.mkdir(parents=True)
    if plan.enhanced:
        _save(_enhanced_dataset(plan, frames), folder)
        return 1
    template = _single_frame_template(plan)
    for file_index, pixels in enumerate(frames):
        _save(_single_frame_dataset(template, plan, file_index, pixels), folder)
    return len(frames)


def _save(dataset: Dataset, folder: Path) -> None:
    dataset.save_as(folder / f"{dataset.SOPInstanceUID}.dcm", enforce_file_format=True)


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """Return the File Meta Information (PS3.10 7.1) of one uncompressed file."""
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = sop_class_uid
    file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return file_meta


def _series_attributes(plan: SeriesPlan, sop_class_uid: str) -> Dataset:
    """Return the patient, study, series, equipment and acquisition attributes of ``plan``."""
    patient = plan.patient
    dataset = Dataset()
    dataset.SpecificCharacterSet = "ISO_IR 100"
    dataset.SOPClassUID = sop_class_uid
    dataset.StudyDate = dataset.SeriesDate = dataset.ContentDate = plan.study_date
    dataset.StudyTime = dataset.SeriesTime = dataset.ContentTime = plan.study_time
    dataset.Modality = "CT" if plan.modality == "CTA" else "MR"
    dataset.Manufacturer = "RSNA-SAMPLE"
    dataset.InstitutionName = INSTITUTION_NAME
    dataset.ReferringPhysicianName = PHYSICIAN_NAME
    dataset.PatientName = patient.PatientName
    dataset.PatientID = patient.PatientID
    dataset.PatientBirthDate = patient.PatientBirthDate
    dataset.PatientSex = patient.PatientSex[0]
    dataset.PatientAge = f"{patient.PatientAge:03d}Y"
    dataset.PatientPosition = "HFS"
    dataset.StudyInstanceUID = plan.StudyInstanceUID
    dataset.SeriesInstanceUID = plan.SeriesInstanceUID
    dataset.StudyID = str(plan.index + 1)
    dataset.SeriesNumber = plan.index % 20 + 1
    dataset.FrameOfReferenceUID = plan.FrameOfReferenceUID
    dataset.PositionReferenceIndicator = ""
    _set_acquisition(dataset, plan)
    return dataset


def _set_acquisition(dataset: Dataset, plan: SeriesPlan) -> None:
    """Set SeriesDescription and the modality's acquisition attributes."""
    plane = _PLANE_ABBREVIATIONS[plan.plane]
    for keyword, value in _MODALITY_HEADERS[plan.modality].items():
        if dataset.SOPClassUID == EnhancedMRImageStorage and keyword in _ENHANCED_MR_MOVED:
            continue
        setattr(dataset, keyword, value.format(plane=plane) if isinstance(value, str) else value)
    if plan.modality == "CTA":
        dataset.KVP = "120"
        dataset.ConvolutionKernel = "SOFT"
    else:
        dataset.MagneticFieldStrength = "3"


def _set_pixel_module(dataset: Dataset, plan: SeriesPlan, frames: np.ndarray) -> None:
    """Set the Image Pixel module (PS3.3 C.7.6.3) and the pixel data, RLE-compressed if planned.

    ``frames`` is ``(rows, columns)`` or ``(frames, rows, columns)`` of stored values.
    """
    signed = frames.dtype == np.int16
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = frames.shape[-2:]
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16 if signed else 12
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 1 if signed else 0
    if plan.rle:
        dataset.compress(
            RLELossless,
            frames,
            encoding_plugin=RLE_ENCODING_PLUGIN,
            generate_instance_uid=False,
        )
    else:
        dataset.PixelData = frames.tobytes()


def _single_frame_template(plan: SeriesPlan) -> Dataset:
    """Return the attributes shared by every file of a single-frame series.

    Files copy its elements and add their own. Elements must not be changed in a copy,
    because ``setattr`` on an element present in the template would change it in every
    file of the series.
    """
    geometry = plan.geometry
    is_ct = plan.modality == "CTA"
    dataset = _series_attributes(plan, CTImageStorage if is_ct else MRImageStorage)
    dataset.ImageType = (
        ["ORIGINAL", "PRIMARY", "AXIAL"] if is_ct else ["ORIGINAL", "PRIMARY", "M", "ND"]
    )
    dataset.ImageOrientationPatient = [
        decimal_string(value) for value in (*geometry.row_cosine, *geometry.column_cosine)
    ]
    dataset.PixelSpacing = [decimal_string(value) for value in geometry.spacing_mm[1:]]
    dataset.SliceThickness = decimal_string(geometry.spacing_mm[0])
    if is_ct:
        slope, intercept, _ = ct_rescale(plan)
        dataset.RescaleIntercept = decimal_string(intercept)
        dataset.RescaleSlope = decimal_string(slope)
        dataset.RescaleType = "HU"
    else:
        dataset.SpacingBetweenSlices = decimal_string(geometry.spacing_mm[0])
    return dataset


def _single_frame_dataset(
    template: Dataset, plan: SeriesPlan, file_index: int, pixels: np.ndarray
) -> Dataset:
    """Return file ``file_index`` of a single-frame series: the template plus its own elements."""
    sop_instance_uid = plan.sop_instance_uid(file_index)
    position = plan.geometry.slice_position(plan.slice_of_frame(file_index))
    dataset = Dataset({element.tag: element for element in template})
    dataset.file_meta = _file_meta(template.SOPClassUID, sop_instance_uid)

    dataset.SOPInstanceUID = sop_instance_uid
    dataset.InstanceNumber = file_index + 1
    dataset.ImagePositionPatient = [decimal_string(value) for value in position]
    dataset.SliceLocation = decimal_string(float(position @ plan.geometry.normal))
    _set_pixel_module(dataset, plan, pixels)
    return dataset


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _shared_functional_groups(plan: SeriesPlan, frame_type: list[str]) -> Dataset:
    """Return the one item of SharedFunctionalGroupsSequence: spacing, orientation, LUT, timing."""
    geometry = plan.geometry
    gap = decimal_string(geometry.spacing_mm[0])
    shared = _item(
        PixelMeasuresSequence=Sequence(
            [
                _item(
                    PixelSpacing=[decimal_string(value) for value in geometry.spacing_mm[1:]],
                    SliceThickness=gap,
                    SpacingBetweenSlices=gap,
                )
            ]
        ),
        PlaneOrientationSequence=Sequence(
            [
                _item(
                    ImageOrientationPatient=[
                        decimal_string(value)
                        for value in (*geometry.row_cosine, *geometry.column_cosine)
                    ]
                )
            ]
        ),
    )
    frame_type_item = _item(
        FrameType=frame_type,
        PixelPresentation="MONOCHROME",
        VolumetricProperties="VOLUME",
        VolumeBasedCalculationTechnique="NONE",
    )
    if plan.modality == "CTA":
        slope, intercept, _ = ct_rescale(plan)
        shared.PixelValueTransformationSequence = Sequence(
            [
                _item(
                    RescaleIntercept=decimal_string(intercept),
                    RescaleSlope=decimal_string(slope),
                    RescaleType="HU",
                )
            ]
        )
        shared.CTImageFrameTypeSequence = Sequence([frame_type_item])
        return shared

    headers = _MODALITY_HEADERS[plan.modality]
    frame_type_item.ComplexImageComponent = "MAGNITUDE"
    frame_type_item.AcquisitionContrast = _ACQUISITION_CONTRAST[plan.modality]
    shared.MRImageFrameTypeSequence = Sequence([frame_type_item])
    shared.MRTimingAndRelatedParametersSequence = Sequence(
        [
            _item(
                RepetitionTime=float(headers["RepetitionTime"]),
                FlipAngle=float(headers["FlipAngle"]),
            )
        ]
    )
    shared.MREchoSequence = Sequence([_item(EffectiveEchoTime=float(headers["EchoTime"]))])
    return shared


def _per_frame_functional_groups(plan: SeriesPlan) -> Sequence:
    """Return one item per frame with its PlanePositionSequence and FrameContentSequence."""
    items = []
    for frame in range(plan.geometry.shape[0]):
        slice_index = plan.slice_of_frame(frame)
        position = plan.geometry.slice_position(slice_index)
        content = _item(
            StackID="1",
            InStackPositionNumber=slice_index + 1,
            DimensionIndexValues=[1, slice_index + 1],
        )
        plane_position = _item(ImagePositionPatient=[decimal_string(value) for value in position])
        items.append(
            _item(
                FrameContentSequence=Sequence([content]),
                PlanePositionSequence=Sequence([plane_position]),
            )
        )
    return Sequence(items)


def _dimension_modules(plan: SeriesPlan, dataset: Dataset) -> None:
    """Set the Multi-frame Dimension module: frames indexed by stack and position in it."""
    organization_uid = make_uid(plan.seed, "dimension-organization", plan.index)
    dataset.DimensionOrganizationSequence = Sequence(
        [_item(DimensionOrganizationUID=organization_uid)]
    )
    frame_content_tag = 0x00209111
    dataset.DimensionIndexSequence = Sequence(
        [
            _item(
                DimensionOrganizationUID=organization_uid,
                DimensionIndexPointer=pointer,
                FunctionalGroupPointer=frame_content_tag,
            )
            for pointer in (0x00209056, 0x00209057)  # StackID, InStackPositionNumber
        ]
    )


def _enhanced_dataset(plan: SeriesPlan, frames: np.ndarray) -> Dataset:
    """Return one Enhanced CT or MR file holding every frame of ``plan``.

    Frame ``f`` is slice :meth:`SeriesPlan.slice_of_frame` ``(f)``. There is no top-level
    ImagePositionPatient or ImageOrientationPatient, as in Enhanced objects in the field.
    """
    is_ct = plan.modality == "CTA"
    sop_class_uid = EnhancedCTImageStorage if is_ct else EnhancedMRImageStorage
    dataset = _series_attributes(plan, sop_class_uid)
    dataset.file_meta = _file_meta(sop_class_uid, plan.sop_instance_uid(0))
    dataset.SOPInstanceUID = plan.sop_instance_uid(0)
    if is_ct:
        frame_type = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    else:
        third = "ANGIO" if plan.modality == "MRA" else "VOLUME"
        frame_type = ["ORIGINAL", "PRIMARY", third, "NONE"]

    dataset.ImageType = frame_type
    dataset.InstanceNumber = 1
    dataset.NumberOfFrames = len(frames)
    dataset.ContentQualification = "PRODUCT"
    dataset.BurnedInAnnotation = "NO"
    dataset.PresentationLUTShape = "IDENTITY"
    dataset.PixelPresentation = "MONOCHROME"
    dataset.VolumetricProperties = "VOLUME"
    dataset.VolumeBasedCalculationTechnique = "NONE"
    if not is_ct:
        dataset.AcquisitionContrast = _ACQUISITION_CONTRAST[plan.modality]
    dataset.SharedFunctionalGroupsSequence = Sequence([_shared_functional_groups(plan, frame_type)])
    dataset.PerFrameFunctionalGroupsSequence = _per_frame_functional_groups(plan)
    _dimension_modules(plan, dataset)
    _set_pixel_module(dataset, plan, frames)
    return dataset


def localizer_rows(plan: SeriesPlan) -> list[dict[str, str]]:
    """Return the train_localizers.csv rows of ``plan``: one per aneurysm, at its centre.

    ``x`` is the column and ``y`` the row of the centre in pixels, on the slice (or, with
    ``'f'``, the 0-based frame) nearest to it.
    """
    geometry = plan.geometry
    rows = []
    for aneurysm in plan.patient.aneurysms:
        centre = plan.pose.head_to_patient(np.asarray(aneurysm.centre_mm))
        k, row, column = geometry.patient_to_index(centre)
        slice_index = int(np.rint(k))
        inside = 0 <= slice_index < geometry.shape[0] and 0 <= row <= geometry.shape[1] - 1
        if not inside or not 0 <= column <= geometry.shape[2] - 1:
            logger.warning(
                "series %s: aneurysm at %s lies outside the field of view; no localizer row",
                plan.SeriesInstanceUID,
                aneurysm.location,
            )
            continue
        frame = plan.slice_of_frame(slice_index)
        coordinates: dict[str, float | int] = {
            "x": round(float(column), 2),
            "y": round(float(row), 2),
        }
        if plan.enhanced:
            coordinates["f"] = frame
            sop_instance_uid = plan.sop_instance_uid(0)
        else:
            sop_instance_uid = plan.sop_instance_uid(frame)
        rows.append(
            {
                "SeriesInstanceUID": plan.SeriesInstanceUID,
                "SOPInstanceUID": sop_instance_uid,
                "coordinates": str(coordinates),
                "location": aneurysm.location,
            }
        )
    return rows


def train_row(plan: SeriesPlan) -> dict[str, object]:
    """Return the train.csv row of ``plan`` with labels 0/1 from its patient's aneurysms."""
    locations = {aneurysm.location for aneurysm in plan.patient.aneurysms}
    row: dict[str, object] = {
        "SeriesInstanceUID": plan.SeriesInstanceUID,
        "PatientAge": plan.patient.PatientAge,
        "PatientSex": plan.patient.PatientSex,
        "Modality": plan.modality,
    }
    row.update({location: int(location in locations) for location in LOCATION_COLUMNS})
    row[LABEL_COLUMNS[-1]] = int(bool(locations))
    return row


def write_csv(path: str | os.PathLike, columns: tuple[str, ...], rows: list[dict]) -> None:
    """Write ``rows`` with a header of ``columns`` in that order, Unix line endings."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_tables(plans: list[SeriesPlan], root: Path) -> None:
    """Write ``train.csv`` and ``train_localizers.csv`` of ``plans`` into ``root``."""
    write_csv(root / "train.csv", TRAIN_CSV_COLUMNS, [train_row(plan) for plan in plans])
    localizers = [row for plan in plans for row in localizer_rows(plan)]
    write_csv(root / "train_localizers.csv", LOCALIZER_CSV_COLUMNS, localizers)
