"""Header-only summary of a series folder, for the manifest.

:func:`scan_series` runs the same selection, grouping, 4D and z-spacing rules as
:func:`rsna.dicom.read_series`, but decodes no pixels, so a series it accepts fails later
only on pixel data (a missing decoder, a truncated file).
"""

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rsna.dicom.headers import FileHeader
from rsna.dicom.orientation import orientation_label
from rsna.dicom.reader import load_headers, plan_series

# Series description keywords, matched as whole words (case-insensitive).
_MRA_WORDS = re.compile(r"\b(TOF|MRA|ANGIO\w*|COW|CIRCLE OF WILLIS|3D ?TOF|FL3D)\b", re.I)
_CTA_WORDS = re.compile(r"\b(CTA|ANGIO\w*|COW|CIRCLE OF WILLIS|ARTERIAL|CAROTIDS?)\b", re.I)
_T1_WORDS = re.compile(r"(\bT1|MPRAGE|MP-?RAGE|SPGR|BRAVO|VIBE|TFE|FSPGR|T1W)", re.I)
_POST_WORDS = re.compile(
    r"(\+ ?C\b|\bPOST|\bGAD|\bGD\b|\bCONTRAST|\bC\+|\bKM\b|\bMIT KM|\bCE\b|\bDOTAREM|\bGADO)",
    re.I,
)
_T2_WORDS = re.compile(r"(\bT2|FLAIR|\bTSE\b|\bFSE\b|\bSPACE\b|\bCUBE\b|\bHASTE\b)", re.I)
# Echo and repetition times (ms) that make a spin-echo image T2-weighted.
T2_MIN_ECHO_TIME_MS = 60.0
T2_MIN_REPETITION_TIME_MS = 1500.0


@dataclass(frozen=True)
class SeriesSummary:
    """Header facts of one series folder, without names, birth dates or institutions.

    ``file_count`` counts the readable DICOM files in the folder; ``frame_count``,
    ``rows``, ``columns``, ``pixel_spacing_mm`` (row spacing, column spacing),
    ``orientation`` and ``transfer_syntaxes`` describe the chosen stack. ``subtype`` is
    CTA, MRA, MRI T1post, MRI T2 or None, inferred from headers; ``subtype_basis`` names
    the evidence. ``sop_frame_counts`` maps every image SOPInstanceUID in the folder to its
    number of frames; ``stack_sop_instance_uids`` lists those of the chosen stack.
    """

    series_uid: str
    patient_id: str
    modality: str
    file_count: int
    frame_count: int
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float]
    orientation: str
    transfer_syntaxes: tuple[str, ...]
    subtype: str | None
    subtype_basis: str
    slice_spacing_mm: float
    sop_frame_counts: dict[str, int] = field(default_factory=dict)
    stack_sop_instance_uids: tuple[str, ...] = ()
    dropped: tuple[dict, ...] = ()
    warnings: tuple[str, ...] = ()

    def to_record(self) -> dict:
        """Return a JSON-ready dict (lists in place of tuples)."""
        record = asdict(self)
        for key, value in record.items():
            if isinstance(value, tuple):
                record[key] = list(value)
        return record


def scan_series(
    series_dir: str | os.PathLike, *, headers: list[FileHeader] | None = None
) -> SeriesSummary:
    """Summarize a series folder from its headers only; raise SeriesError if it has no volume.

    ``headers`` may be a :func:`rsna.dicom.read_headers` result for the same folder.
    """
    series_dir = Path(series_dir)
    if headers is None:
        headers = load_headers(series_dir)
    plan = plan_series(headers, series_dir=series_dir)
    stack = plan.stack
    first = stack.frames[0].header
    stack_headers = list({frame.header.path: frame.header for frame in stack.frames}.values())
    subtype, basis = infer_subtype(stack_headers)
    return SeriesSummary(
        series_uid=stack.group.series_uid,
        patient_id=first.patient_id,
        modality=first.modality,
        file_count=plan.file_count,
        frame_count=len(stack.frames),
        rows=stack.group.rows,
        columns=stack.group.columns,
        pixel_spacing_mm=tuple(float(v) for v in stack.group.pixel_spacing_mm),
        orientation=orientation_label(stack.axes.normal),
        transfer_syntaxes=tuple(sorted({h.transfer_syntax_uid for h in stack_headers})),
        subtype=subtype,
        subtype_basis=basis,
        slice_spacing_mm=float(stack.z_grid.spacing_mm),
        sop_frame_counts={
            h.sop_instance_uid: h.number_of_frames
            for h in headers
            if h.problem is None and h.has_pixel_data
        },
        stack_sop_instance_uids=tuple(h.sop_instance_uid for h in stack_headers),
        dropped=plan.dropped,
        warnings=plan.warnings,
    )


def infer_subtype(headers: list[FileHeader]) -> tuple[str | None, str]:
    """Return (subtype, basis) from the headers of a stack; subtype None when unclear.

    CT is CTA when ContrastBolusAgent is set or the description names an angiogram. MR
    rules are tried in this order:

    - MRA: AngioFlag Y, a TOF sequence name, or MRA, TOF or ANGIO in the description.
    - MRI T1post: T1 weighting and contrast, from the description or ContrastBolusAgent.
    - MRI T2: T2 in the description, or spin echo with long echo and repetition times.
    """
    header = headers[0]
    text = " ".join(part for part in (header.series_description, header.protocol_name) if part)
    if header.modality == "CT":
        return _ct_subtype(header, text)
    if header.modality == "MR":
        return _mr_subtype(header, text)
    return None, f"Modality {header.modality or 'missing'}"


def _ct_subtype(header: FileHeader, text: str) -> tuple[str | None, str]:
    if header.contrast_bolus_agent:
        return "CTA", f"ContrastBolusAgent {header.contrast_bolus_agent!r}"
    match = _CTA_WORDS.search(text)
    if match:
        return "CTA", f"description contains {match.group(0)!r}"
    return None, "CT without contrast agent or angiography keyword in the headers"


def _mr_subtype(header: FileHeader, text: str) -> tuple[str | None, str]:
    if header.angio_flag == "Y":
        return "MRA", "AngioFlag Y"
    if "TOF" in header.sequence_name.upper():
        return "MRA", f"SequenceName {header.sequence_name!r}"
    match = _MRA_WORDS.search(text)
    if match:
        return "MRA", f"description contains {match.group(0)!r}"
    t1 = _T1_WORDS.search(text)
    post = _POST_WORDS.search(text)
    if t1 and (post or header.contrast_bolus_agent):
        evidence = post.group(0) if post else f"ContrastBolusAgent {header.contrast_bolus_agent}"
        return "MRI T1post", f"description contains {t1.group(0)!r} and {evidence!r}"
    t2 = _T2_WORDS.search(text)
    if t2:
        return "MRI T2", f"description contains {t2.group(0)!r}"
    if _long_echo_spin_echo(header):
        return "MRI T2", (
            f"spin echo with EchoTime {header.echo_time_ms:g} ms and RepetitionTime "
            f"{header.repetition_time_ms:g} ms"
        )
    if header.contrast_bolus_agent:
        return "MRI T1post", f"ContrastBolusAgent {header.contrast_bolus_agent!r}"
    return None, "MR without angiography, contrast or T2 evidence in the headers"


def _long_echo_spin_echo(header: FileHeader) -> bool:
    return (
        "SE" in header.scanning_sequence
        and header.echo_time_ms is not None
        and header.repetition_time_ms is not None
        and header.echo_time_ms >= T2_MIN_ECHO_TIME_MS
        and header.repetition_time_ms >= T2_MIN_REPETITION_TIME_MS
    )
