"""Header pass: one small, picklable record per file, read without the pixel data.

Each file is parsed once up to the Pixel Data element, by :mod:`rsna.dicom.rawparse` when
it covers the file (little-endian files with the usual layout) and by
``pydicom.dcmread(stop_before_pixels=True)`` otherwise. Both give the same pydicom data
set, so the values read from it are the same. The byte offset of the Pixel Data value is
recorded, so the pixel pass reads native pixel data straight from the file into a
preallocated array without parsing the header again. Patient names, birth dates,
institution and physician names are never copied into the records.
"""

import logging
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from rsna.dicom.enhanced import frame_planes_of_enhanced, is_enhanced
from rsna.dicom.rawparse import UnsupportedHeaderError, parse_header
from rsna.dicom.values import (
    read_float,
    read_floats,
    read_int,
    read_text,
    read_texts,
)

logger = logging.getLogger(__name__)

PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
# Exceptions pydicom raises on truncated or corrupt files and malformed values.
HEADER_ERRORS = (
    InvalidDicomError,
    EOFError,
    OSError,
    struct.error,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    NotImplementedError,
)
# Top-level sequences that the header pass reads (rsna.dicom.enhanced and
# _contrast_agent). The fast parse leaves undefined-length sequences out of the data set,
# so pydicom reads a file where one of these has undefined length.
SEQUENCES_READ = frozenset(
    tag_for_keyword(keyword)
    for keyword in (
        "SharedFunctionalGroupsSequence",
        "PerFrameFunctionalGroupsSequence",
        "ContrastBolusAgentSequence",
    )
)


@dataclass(frozen=True)
class FramePlane:
    """Geometry and modality LUT of one 2D frame (one file, or one frame of a multi-frame file).

    ``position_mm`` is ImagePositionPatient (x, y, z) in LPS mm, the centre of the first
    pixel. ``orientation`` is ImageOrientationPatient: row cosine (direction of increasing
    column index) then column cosine (direction of increasing row index). ``pixel_spacing_mm``
    is PixelSpacing: (spacing between rows, spacing between columns). Any of them is None
    when the header lacks it or its value is invalid.
    """

    position_mm: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing_mm: tuple[float, float] | None
    rescale_slope: float
    rescale_intercept: float
    has_rescale: bool
    temporal_index: int | None
    slice_thickness_mm: float | None
    spacing_between_slices_mm: float | None


@dataclass(frozen=True)
class FileHeader:
    """Header values of one file that the reader and the manifest use.

    ``problem`` is set, and most other fields left at their defaults, when the file is not
    a readable DICOM file. ``pixel_data_offset`` is the byte offset of the Pixel Data value
    in the file (None when there is none or the data set is deflated) and
    ``pixel_data_length`` its length (None for encapsulated, that is compressed, data).
    ``frames`` contains one :class:`FramePlane` per frame, in frame order.
    """

    path: str
    problem: str | None = None
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    series_instance_uid: str = ""
    series_number: int | None = None
    modality: str = ""
    patient_id: str = ""
    image_type: tuple[str, ...] = ()
    transfer_syntax_uid: str = ""
    rows: int = 0
    columns: int = 0
    samples_per_pixel: int = 1
    bits_allocated: int = 0
    bits_stored: int = 0
    pixel_representation: int = 0
    photometric_interpretation: str = ""
    pixel_padding_value: int | None = None
    pixel_padding_range_limit: int | None = None
    has_pixel_data: bool = False
    pixel_data_offset: int | None = None
    pixel_data_length: int | None = None
    number_of_frames: int = 1
    enhanced: bool = False
    frames: tuple[FramePlane, ...] = ()
    instance_number: int | None = None
    acquisition_number: int | None = None
    number_of_temporal_positions: int | None = None
    gantry_detector_tilt_deg: float | None = None
    series_description: str = ""
    protocol_name: str = ""
    sequence_name: str = ""
    scanning_sequence: tuple[str, ...] = ()
    angio_flag: str = ""
    contrast_bolus_agent: str = ""
    echo_time_ms: float | None = None
    repetition_time_ms: float | None = None
    inversion_time_ms: float | None = None

    @property
    def name(self) -> str:
        """File name without the folder, as reports show it."""
        return Path(self.path).name


def read_headers(series_dir: str | os.PathLike, *, fast_path: bool = True) -> list[FileHeader]:
    """Read the header of every file directly inside ``series_dir``, sorted by file name.

    Hidden files and sub-folders are skipped. A file that is not DICOM gives a record with
    ``problem`` set rather than an exception, so one stray file never stops a series.
    ``fast_path=False`` parses every file with pydicom, for comparisons and benchmarks;
    the records are the same.
    """
    folder = Path(series_dir)
    paths = sorted(
        path for path in folder.iterdir() if path.is_file() and not path.name.startswith(".")
    )
    return [read_header(path, fast_path=fast_path) for path in paths]


def read_header(path: str | os.PathLike, *, fast_path: bool = True) -> FileHeader:
    """Read one file's header into a :class:`FileHeader`, stopping before the pixel data."""
    path = str(path)
    try:
        with open(path, "rb") as handle, warnings.catch_warnings():
            # Headers from the wild carry odd character sets and invalid values; pydicom
            # warns about each, and every value used here is validated on conversion.
            warnings.simplefilter("ignore")
            dataset, pixel_location, transfer_syntax = _parse_file(handle, fast_path=fast_path)
            return _header_from_dataset(path, dataset, pixel_location, transfer_syntax)
    except HEADER_ERRORS as error:
        return FileHeader(path=path, problem=f"not a readable DICOM file ({error})")


def _parse_file(
    handle: Any, *, fast_path: bool
) -> tuple[Dataset, tuple[int, int | None] | None, str]:
    """Return the data set before the pixel data, the Pixel Data location and the syntax.

    The fast parse runs first unless ``fast_path`` is False; pydicom reads every file it
    declines, from the start.
    """
    if fast_path:
        try:
            return parse_header(handle, sequences_read=SEQUENCES_READ)
        except UnsupportedHeaderError as reason:
            logger.debug("%s: read with pydicom, because %s", handle.name, reason)
            handle.seek(0)

    dataset = _parse_dataset(handle)
    return dataset, _locate_pixel_data(handle, dataset), str(_transfer_syntax(dataset))


def _parse_dataset(handle: Any) -> Dataset:
    try:
        return pydicom.dcmread(handle, stop_before_pixels=True)
    except InvalidDicomError:
        # Files without the 128-byte preamble and "DICM" prefix (ACR-NEMA style) are still
        # common in old archives. Accept them only if they look like an image object.
        handle.seek(0)
        dataset = pydicom.dcmread(handle, stop_before_pixels=True, force=True)
        if "SOPClassUID" not in dataset and "Rows" not in dataset:
            raise InvalidDicomError("no DICOM preamble and no SOPClassUID or Rows") from None
        return dataset


def _transfer_syntax(dataset: Dataset) -> UID:
    file_meta = getattr(dataset, "file_meta", None)
    uid = getattr(file_meta, "TransferSyntaxUID", None) if file_meta is not None else None
    if uid:
        return UID(str(uid))
    implicit, little = dataset.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _locate_pixel_data(handle: Any, dataset: Dataset) -> tuple[int, int | None] | None:
    """Return (value offset, value length or None when undefined) of Pixel Data, or None.

    pydicom leaves the file positioned at the tag of the element it stopped before.
    """
    if _transfer_syntax(dataset).is_deflated:
        return None
    implicit, little = dataset.original_encoding
    start = handle.tell()
    head = handle.read(8)
    if len(head) < 8:
        return None
    endian = "<" if little else ">"
    group, element = struct.unpack(endian + "HH", head[:4])
    if (group << 16 | element) != PIXEL_DATA_TAG:
        return None
    if implicit:
        (length,) = struct.unpack(endian + "L", head[4:8])
        offset = start + 8
    else:
        (length,) = struct.unpack(endian + "L", handle.read(4))
        offset = start + 12
    return offset, (None if length == UNDEFINED_LENGTH else length)


def _header_from_dataset(
    path: str,
    dataset: Dataset,
    pixel_location: tuple[int, int | None] | None,
    transfer_syntax_uid: str,
) -> FileHeader:
    number_of_frames = max(read_int(dataset, "NumberOfFrames") or 1, 1)
    enhanced = is_enhanced(dataset)
    frames = (
        frame_planes_of_enhanced(dataset, number_of_frames)
        if enhanced
        else (frame_plane_of_classic(dataset),) * number_of_frames
    )
    # Read once here: three fields depend on each of them.
    bits_allocated = read_int(dataset, "BitsAllocated")
    pixel_representation = read_int(dataset, "PixelRepresentation")
    return FileHeader(
        path=path,
        sop_instance_uid=read_text(dataset, "SOPInstanceUID"),
        sop_class_uid=read_text(dataset, "SOPClassUID"),
        series_instance_uid=read_text(dataset, "SeriesInstanceUID"),
        series_number=read_int(dataset, "SeriesNumber"),
        modality=read_text(dataset, "Modality").upper(),
        patient_id=read_text(dataset, "PatientID"),
        image_type=tuple(value.upper() for value in read_texts(dataset, "ImageType")),
        transfer_syntax_uid=transfer_syntax_uid,
        rows=read_int(dataset, "Rows") or 0,
        columns=read_int(dataset, "Columns") or 0,
        samples_per_pixel=read_int(dataset, "SamplesPerPixel") or 1,
        bits_allocated=bits_allocated or 0,
        bits_stored=read_int(dataset, "BitsStored") or bits_allocated or 0,
        pixel_representation=pixel_representation or 0,
        photometric_interpretation=read_text(dataset, "PhotometricInterpretation").upper(),
        pixel_padding_value=_stored_integer(
            read_int(dataset, "PixelPaddingValue"),
            bits_allocated=bits_allocated or 16,
            signed=pixel_representation == 1,
        ),
        pixel_padding_range_limit=_stored_integer(
            read_int(dataset, "PixelPaddingRangeLimit"),
            bits_allocated=bits_allocated or 16,
            signed=pixel_representation == 1,
        ),
        has_pixel_data=pixel_location is not None or "PixelData" in dataset,
        pixel_data_offset=pixel_location[0] if pixel_location else None,
        pixel_data_length=pixel_location[1] if pixel_location else None,
        number_of_frames=number_of_frames,
        enhanced=enhanced,
        frames=frames,
        instance_number=read_int(dataset, "InstanceNumber"),
        acquisition_number=read_int(dataset, "AcquisitionNumber"),
        number_of_temporal_positions=read_int(dataset, "NumberOfTemporalPositions"),
        gantry_detector_tilt_deg=read_float(dataset, "GantryDetectorTilt"),
        series_description=read_text(dataset, "SeriesDescription"),
        protocol_name=read_text(dataset, "ProtocolName"),
        sequence_name=_sequence_name(dataset),
        scanning_sequence=tuple(value.upper() for value in read_texts(dataset, "ScanningSequence")),
        angio_flag=read_text(dataset, "AngioFlag").upper(),
        contrast_bolus_agent=_contrast_agent(dataset),
        echo_time_ms=_echo_time(dataset, enhanced=enhanced),
        repetition_time_ms=_first_float(
            dataset, "RepetitionTime", "MRTimingAndRelatedParametersSequence", enhanced=enhanced
        ),
        inversion_time_ms=read_float(dataset, "InversionTime"),
    )


def _stored_integer(value: int | None, *, bits_allocated: int, signed: bool) -> int | None:
    """Return a US-or-SS value (such as PixelPaddingValue) as the signed or unsigned pixel value.

    Writers often store a negative padding value of signed pixel data with VR US, which
    reads as a large positive number; PixelRepresentation 1 (``signed``) makes it negative.
    """
    if value is not None and signed and value >= 1 << (bits_allocated - 1):
        value -= 1 << bits_allocated
    return value


def frame_plane_of_classic(dataset: Dataset) -> FramePlane:
    """Return the :class:`FramePlane` of a classic (not enhanced) image from top-level tags."""
    slope = read_float(dataset, "RescaleSlope")
    intercept = read_float(dataset, "RescaleIntercept")
    return FramePlane(
        position_mm=_triple(read_floats(dataset, "ImagePositionPatient")),
        orientation=_sextuple(read_floats(dataset, "ImageOrientationPatient")),
        pixel_spacing_mm=_pair(read_floats(dataset, "PixelSpacing")),
        rescale_slope=slope if slope not in (None, 0.0) else 1.0,
        rescale_intercept=intercept if intercept is not None else 0.0,
        has_rescale=slope is not None or intercept is not None,
        temporal_index=read_int(dataset, "TemporalPositionIdentifier"),
        slice_thickness_mm=read_float(dataset, "SliceThickness"),
        spacing_between_slices_mm=read_float(dataset, "SpacingBetweenSlices"),
    )


def _triple(values: tuple[float, ...] | None) -> tuple[float, float, float] | None:
    return values if values is not None and len(values) == 3 else None


def _pair(values: tuple[float, ...] | None) -> tuple[float, float] | None:
    if values is None or len(values) != 2 or min(values) <= 0:
        return None
    return values


def _sextuple(values: tuple[float, ...] | None) -> tuple[float, ...] | None:
    return values if values is not None and len(values) == 6 else None


def _sequence_name(dataset: Dataset) -> str:
    return read_text(dataset, "SequenceName") or read_text(dataset, "PulseSequenceName")


def _contrast_agent(dataset: Dataset) -> str:
    agent = read_text(dataset, "ContrastBolusAgent")
    if agent:
        return agent
    if "ContrastBolusAgentSequence" in dataset:
        return "ContrastBolusAgentSequence"
    return ""


def _echo_time(dataset: Dataset, *, enhanced: bool) -> float | None:
    echo = read_float(dataset, "EchoTime")
    if echo is not None:
        return echo
    return _first_float(dataset, "EffectiveEchoTime", "MREchoSequence", enhanced=enhanced)


def _first_float(dataset: Dataset, keyword: str, macro: str, *, enhanced: bool) -> float | None:
    """Return a top-level value, or the same keyword from an enhanced functional group.

    ``enhanced`` is :func:`is_enhanced` of ``dataset``: without functional groups there
    is nothing more to search.
    """
    value = read_float(dataset, keyword)
    if value is not None or not enhanced:
        return value
    for groups_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = dataset.get(groups_keyword)
        if not groups:
            continue
        item = groups[0].get(macro)
        if item:
            value = read_float(item[0], keyword)
            if value is not None:
                return value
    return None
