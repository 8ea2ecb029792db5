"""Per-frame geometry of Enhanced multi-frame objects from their functional groups.

Enhanced CT and MR objects (DICOM PS3.3 C.7.6.16, Multi-frame Functional Groups) keep the
geometry of each frame in PerFrameFunctionalGroupsSequence, or once for all frames in
SharedFunctionalGroupsSequence: PlanePositionSequence (ImagePositionPatient),
PlaneOrientationSequence (ImageOrientationPatient), PixelMeasuresSequence (PixelSpacing,
SliceThickness, SpacingBetweenSlices), PixelValueTransformationSequence (RescaleSlope,
RescaleIntercept) and FrameContentSequence (TemporalPositionIndex). A per-frame item
overrides the shared one. Top-level tags are the last fallback, because some converters
write them instead of the functional groups.

TODO: some RSNA multi-frame files declare an axial orientation but contain sagittal or
coronal images. Nothing in the header reveals it, so such volumes come out mislabelled.
"""

from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from rsna.dicom.values import read_floats, read_int

if TYPE_CHECKING:
    from rsna.dicom.headers import FramePlane


def is_enhanced(dataset: Dataset) -> bool:
    """Return whether ``dataset`` stores its frame geometry in functional groups."""
    return "PerFrameFunctionalGroupsSequence" in dataset or (
        "SharedFunctionalGroupsSequence" in dataset
    )


def frame_planes_of_enhanced(dataset: Dataset, number_of_frames: int) -> tuple["FramePlane", ...]:
    """Return one FramePlane per frame, in frame order, from the functional groups."""
    shared = _first_item(dataset, "SharedFunctionalGroupsSequence")
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    planes = []
    for index in range(number_of_frames):
        frame_groups = per_frame[index] if index < len(per_frame) else None
        planes.append(_frame_plane(dataset, shared, frame_groups))
    return tuple(planes)


def _first_item(dataset: Dataset | None, keyword: str) -> Dataset | None:
    if dataset is None:
        return None
    sequence = dataset.get(keyword)
    return sequence[0] if sequence else None


def _macro(
    frame_groups: Dataset | None, shared: Dataset | None, keyword: str
) -> tuple[Dataset | None, ...]:
    """Return the macro items to search in order: per-frame, then shared."""
    return (_first_item(frame_groups, keyword), _first_item(shared, keyword))


def _lookup_floats(
    items: tuple[Dataset | None, ...], top_level: Dataset, keyword: str
) -> tuple[float, ...] | None:
    for item in (*items, top_level):
        if item is not None:
            values = read_floats(item, keyword)
            if values is not None:
                return values
    return None


def _lookup_float(
    items: tuple[Dataset | None, ...], top_level: Dataset, keyword: str
) -> float | None:
    values = _lookup_floats(items, top_level, keyword)
    return values[0] if values else None


def _frame_plane(dataset: Dataset, shared: Dataset | None, frame_groups: Dataset | None):
    from rsna.dicom.headers import FramePlane

    position = _lookup_floats(
        _macro(frame_groups, shared, "PlanePositionSequence"), dataset, "ImagePositionPatient"
    )
    orientation = _lookup_floats(
        _macro(frame_groups, shared, "PlaneOrientationSequence"),
        dataset,
        "ImageOrientationPatient",
    )
    measures = _macro(frame_groups, shared, "PixelMeasuresSequence")
    spacing = _lookup_floats(measures, dataset, "PixelSpacing")
    transformation = _macro(frame_groups, shared, "PixelValueTransformationSequence")
    slope = _lookup_float(transformation, dataset, "RescaleSlope")
    intercept = _lookup_float(transformation, dataset, "RescaleIntercept")
    content = _first_item(frame_groups, "FrameContentSequence")
    return FramePlane(
        position_mm=position if position is not None and len(position) == 3 else None,
        orientation=orientation if orientation is not None and len(orientation) == 6 else None,
        pixel_spacing_mm=spacing
        if spacing is not None and len(spacing) == 2 and min(spacing) > 0
        else None,
        rescale_slope=slope if slope not in (None, 0.0) else 1.0,
        rescale_intercept=intercept if intercept is not None else 0.0,
        has_rescale=slope is not None or intercept is not None,
        temporal_index=read_int(content, "TemporalPositionIndex") if content is not None else None,
        slice_thickness_mm=_lookup_float(measures, dataset, "SliceThickness"),
        spacing_between_slices_mm=_lookup_float(measures, dataset, "SpacingBetweenSlices"),
    )
