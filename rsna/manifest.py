"""The manifest: one record per usable series, from the CSV files and DICOM headers only.

:func:`build_manifest` reads ``train.csv`` and ``train_localizers.csv`` of a data root in
the challenge layout. It summarizes each series folder with :func:`rsna.dicom.scan_series`
(headers only, in parallel processes) and writes two JSON-lines files. The manifest has
one record per usable series, and the rejects file one ``{SeriesInstanceUID,
series_dir, reason}`` object per series left out.

A record keeps only what training needs: UIDs, PatientID for grouping, age, sex, labels
and geometry. PatientName, PatientBirthDate, institution and physician names are never
read into it.
"""

import ast
import csv
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tqdm import tqdm

from rsna.dicom import SeriesError, SeriesSummary, scan_series
from rsna.fileio import write_jsonl
from rsna.labels import (
    ANEURYSM_PRESENT,
    LABEL_COLUMNS,
    LOCALIZER_CSV_COLUMNS,
    LOCATION_COLUMNS,
    MODALITIES,
    PATIENT_SEXES,
    TRAIN_CSV_COLUMNS,
)
from rsna.logs import progress_disabled
from rsna.signals import process_pool
from rsna.uid import InvalidUIDError, validate_uid

logger = logging.getLogger(__name__)

TRAIN_CSV = "train.csv"
LOCALIZERS_CSV = "train_localizers.csv"
SERIES_FOLDER = "series"
MAX_PATIENT_AGE = 130


class ManifestError(ValueError):
    """A data root that yields no manifest: a missing or malformed CSV, or no usable series."""


@dataclass(frozen=True)
class ManifestSettings:
    """The ``manifest`` section of params.yaml."""

    workers: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(
                f"workers must be an integer >= 0 (0 = one per core), got {self.workers!r}"
            )


@dataclass(frozen=True)
class TrainRow:
    """One validated row of train.csv; ``labels`` follow :data:`rsna.labels.LABEL_COLUMNS`."""

    SeriesInstanceUID: str
    PatientAge: int
    PatientSex: str
    Modality: str
    labels: tuple[int, ...]


@dataclass(frozen=True)
class ManifestResult:
    """Counts of what :func:`build_manifest` wrote."""

    records: int
    rejects: int
    localizers: int


class InvalidRowError(ValueError):
    """A train.csv row that cannot be used; the message is the reason."""


def reject_record(uid: str, reason: str, *, valid_uid: bool = True) -> dict:
    """Return a rejects-file record; ``series_dir`` is null when the UID is not a valid UID."""
    series_dir = f"{SERIES_FOLDER}/{uid}" if valid_uid else None
    return {"SeriesInstanceUID": uid, "series_dir": series_dir, "reason": reason}


def _reject(uid: str, reason: str, *, valid_uid: bool = True) -> dict:
    """Return a rejects record and log it as one WARNING line."""
    record = reject_record(uid, reason, valid_uid=valid_uid)
    logger.warning("series %r rejected: %s", uid, reason)
    return record


def _read_csv(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number, fields)`` of each data row after checking the header.

    Raises ManifestError when the file is missing or its header is not ``columns`` in
    that order.
    """
    if not path.is_file():
        raise ManifestError(
            f"{path} not found; check data.root points at a dataset in the challenge layout"
        )
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        if tuple(header) != columns:
            raise ManifestError(
                f"{path} has columns {header}, expected {list(columns)} in this order; "
                "fix the header or point data.root at the challenge's files"
            )
        for fields in reader:
            if fields:
                yield reader.line_num, fields


def _fields_to_row(fields: list[str], columns: tuple[str, ...]) -> dict[str, str]:
    if len(fields) != len(columns):
        raise InvalidRowError(f"row has {len(fields)} fields, expected {len(columns)}")
    return dict(zip(columns, fields, strict=True))


def _parse_label(column: str, text: str) -> int:
    if text.strip() not in ("0", "1"):
        raise InvalidRowError(
            f"label {column!r} is {text!r}, expected 0 or 1; fix the value in train.csv "
            "or remove the row"
        )
    return int(text)


def parse_train_row(row: dict[str, str]) -> TrainRow:
    """Return a validated train.csv row; raise InvalidRowError naming the first bad value.

    The UID must already be valid. PatientAge must be an integer from 0 to 130,
    PatientSex and Modality one of the challenge's values, each label 0 or 1, and a
    location of 1 requires ``Aneurysm Present`` = 1.
    """
    age_text = row["PatientAge"].strip()
    if not (age_text.isascii() and age_text.isdigit()) or int(age_text) > MAX_PATIENT_AGE:
        raise InvalidRowError(
            f"PatientAge is {row['PatientAge']!r}, expected an integer from 0 to {MAX_PATIENT_AGE}"
        )
    if row["PatientSex"] not in PATIENT_SEXES:
        raise InvalidRowError(
            f"PatientSex is {row['PatientSex']!r}, expected one of {list(PATIENT_SEXES)}"
        )
    if row["Modality"] not in MODALITIES:
        raise InvalidRowError(
            f"Modality is {row['Modality']!r}, expected one of {list(MODALITIES)}"
        )
    labels = tuple(_parse_label(column, row[column]) for column in LABEL_COLUMNS)

    positive_locations = [
        name for name, value in zip(LOCATION_COLUMNS, labels, strict=False) if value
    ]
    if positive_locations and not labels[-1]:
        raise InvalidRowError(f"{ANEURYSM_PRESENT} is 0 but locations {positive_locations} are 1")
    return TrainRow(
        SeriesInstanceUID=row["SeriesInstanceUID"],
        PatientAge=int(age_text),
        PatientSex=row["PatientSex"],
        Modality=row["Modality"],
        labels=labels,
    )


def read_train_csv(path: str | os.PathLike) -> tuple[list[TrainRow], list[dict]]:
    """Return the usable rows of train.csv and a rejects record for each other row.

    SeriesInstanceUID is validated before anything else, so an invalid value never
    becomes a path. Of rows repeating a UID only the first is used.
    """
    path = Path(path)
    rows: list[TrainRow] = []
    rejects: list[dict] = []
    seen: set[str] = set()
    for line_number, fields in _read_csv(path, TRAIN_CSV_COLUMNS):
        uid = fields[0]
        where = f"{path.name} line {line_number}"
        try:
            validate_uid(uid)
        except InvalidUIDError as error:
            rejects.append(_reject(uid, f"{where}: {error}", valid_uid=False))
            continue
        if uid in seen:
            rejects.append(
                _reject(uid, f"{where}: repeats an earlier row of this SeriesInstanceUID")
            )
            continue
        seen.add(uid)
        try:
            rows.append(parse_train_row(_fields_to_row(fields, TRAIN_CSV_COLUMNS)))
        except InvalidRowError as error:
            rejects.append(_reject(uid, f"{where}: {error}"))
    logger.info("%s: %d usable rows, %d rejected", path, len(rows), len(rejects))
    return rows, rejects


# Longer coordinate strings are rejected before ast.literal_eval parses them, because
# deeply nested literals can exhaust the parser's stack. Real ones have about 40 characters.
MAX_COORDINATES_LENGTH = 200


def _finite_number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"'{key}' is {value!r}, expected a finite number of pixels")
    if value < 0:
        raise ValueError(f"'{key}' is {value!r}, expected a pixel coordinate >= 0")
    return float(value)


def parse_coordinates(text: str) -> tuple[float, float, int | None]:
    """Return ``(x, y, f)`` from a coordinates string such as ``"{'x': 258.36, 'y': 261.36}"``.

    ``x`` is the column and ``y`` the row in pixels; ``f``, the 0-based frame of a
    multi-frame file, is None when absent. The string is parsed with
    :func:`ast.literal_eval`, never evaluated as code. Raises ValueError naming the
    problem.
    """
    if len(text) > MAX_COORDINATES_LENGTH:
        raise ValueError(
            f"coordinates string has {len(text)} characters, "
            f"expected at most {MAX_COORDINATES_LENGTH}"
        )
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        raise ValueError(f"coordinates {text!r} is not a Python dict literal ({error})") from error
    if (
        not isinstance(value, dict)
        or not {"x", "y"} <= value.keys()
        or set(value) - {"x", "y", "f"}
    ):
        raise ValueError(
            f"coordinates {text!r} must be a dict with keys 'x', 'y' and optionally 'f'"
        )

    x = _finite_number(value["x"], "x")
    y = _finite_number(value["y"], "y")
    frame = value.get("f")
    if isinstance(frame, float) and frame.is_integer():
        frame = int(frame)
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int) or frame < 0):
        raise ValueError(f"'f' is {frame!r}, expected a 0-based frame index (integer >= 0)")
    return x, y, frame


def parse_localizer_row(row: dict[str, str]) -> dict:
    """Return a manifest localizer ``{SOPInstanceUID, x, y, f, location}`` from a CSV row.

    Raises ValueError (InvalidUIDError for a bad UID) naming the bad value.
    """
    validate_uid(row["SOPInstanceUID"], what="SOPInstanceUID")
    if row["location"] not in LOCATION_COLUMNS:
        raise ValueError(
            f"location {row['location']!r} is not one of the 13 location columns of train.csv"
        )
    x, y, frame = parse_coordinates(row["coordinates"])
    return {
        "SOPInstanceUID": row["SOPInstanceUID"],
        "x": x,
        "y": y,
        "f": frame,
        "location": row["location"],
    }


def read_localizers(path: str | os.PathLike, known_uids: set[str]) -> dict[str, list[dict]]:
    """Return the localizer points of each series in ``known_uids``, in file order.

    Rows with a bad UID, location or coordinates, and rows naming a series outside
    ``known_uids``, are logged and ignored. A missing file gives no points and a warning.
    """
    path = Path(path)
    if not path.is_file():
        logger.warning("%s not found: the manifest will have no localizer points", path)
        return {}
    points: dict[str, list[dict]] = {}
    unknown: dict[str, int] = {}
    for line_number, fields in _read_csv(path, LOCALIZER_CSV_COLUMNS):
        try:
            row = _fields_to_row(fields, LOCALIZER_CSV_COLUMNS)
            uid = validate_uid(row["SeriesInstanceUID"])
            point = parse_localizer_row(row)
        except ValueError as error:
            logger.warning("%s line %d ignored: %s", path.name, line_number, error)
            continue
        if uid in known_uids:
            points.setdefault(uid, []).append(point)
        else:
            unknown[uid] = unknown.get(uid, 0) + 1

    for uid, count in unknown.items():
        logger.warning(
            "%s: %d localizer row(s) name series %s, which has no usable train.csv row; ignored",
            path.name,
            count,
            uid,
        )
    logger.info("%s: %d points for %d series", path, sum(map(len, points.values())), len(points))
    return points


def _dropped_summary(dropped: tuple[dict, ...]) -> str:
    """Return the two most common reasons files were dropped, with counts, or ''."""
    reasons = Counter(item.get("reason", "unknown") for item in dropped)
    parts = [f"{count} x {reason}" for reason, count in reasons.most_common(2)]
    return f" (dropped: {'; '.join(parts)})" if parts else ""


def _scan_one(series_dir: Path) -> SeriesSummary | str:
    """Return the header summary of a folder, or the reason it has no usable series."""
    try:
        return scan_series(series_dir)
    except SeriesError as error:
        return str(error) + _dropped_summary(error.dropped)
    except OSError as error:
        return f"failed to read series folder {series_dir}: {error}"


def scan_series_folders(series_dirs: list[Path], *, workers: int) -> list[SeriesSummary | str]:
    """Scan each folder's headers, in ``workers`` processes (0 = one per CPU core).

    Returns a SeriesSummary or a rejection reason per folder, in input order. SIGTERM or
    an error stops the worker processes at once (see :func:`rsna.signals.process_pool`).
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = one per CPU core), got {workers}")
    workers = min(workers or os.cpu_count() or 1, max(len(series_dirs), 1))
    progress = partial(
        tqdm,
        total=len(series_dirs),
        desc="manifest headers",
        unit="series",
        disable=progress_disabled(),
    )
    if workers == 1:
        return list(progress(map(_scan_one, series_dirs)))
    chunksize = max(1, min(16, len(series_dirs) // (workers * 8)))
    with process_pool(workers) as executor:
        return list(progress(executor.map(_scan_one, series_dirs, chunksize=chunksize)))


def subtype_note(modality: str, summary: SeriesSummary) -> str | None:
    """Return why the header subtype disagrees with train.csv's Modality, or None if it agrees."""
    if summary.subtype is None:
        return f"headers do not identify the subtype: {summary.subtype_basis}"
    if summary.subtype != modality:
        return (
            f"headers suggest {summary.subtype} ({summary.subtype_basis}); "
            f"train.csv says {modality}"
        )
    return None


def _localizer_problem(point: dict, summary: SeriesSummary) -> str | None:
    """Return why a localizer point cannot be placed on the series, or None when it can."""
    sop = point["SOPInstanceUID"]
    frames = summary.sop_frame_counts.get(sop)
    if frames is None:
        return f"SOPInstanceUID {sop} is not an image file of the series folder"
    if sop not in summary.stack_sop_instance_uids:
        return f"SOPInstanceUID {sop} is not in the stack the reader chose (it was dropped)"
    if frames > 1 and point["f"] is None:
        return f"SOPInstanceUID {sop} has {frames} frames but the point gives no 'f'"
    if point["f"] is not None and point["f"] >= frames:
        return f"'f' is {point['f']} but SOPInstanceUID {sop} has {frames} frame(s)"
    if point["x"] > summary.columns - 1 or point["y"] > summary.rows - 1:
        size = f"{summary.columns}x{summary.rows}"
        return f"point ({point['x']}, {point['y']}) lies outside the {size} image"
    return None


def usable_localizers(uid: str, points: list[dict], summary: SeriesSummary) -> list[dict]:
    """Return the points that lie on an image of the chosen stack; log each one left out."""
    usable = []
    for point in points:
        problem = _localizer_problem(point, summary)
        if problem is None:
            usable.append(point)
        else:
            logger.warning(
                "series %s: localizer of %s ignored: %s", uid, point["location"], problem
            )
    return usable


def manifest_record(row: TrainRow, summary: SeriesSummary, localizers: list[dict]) -> dict:
    """Return the manifest record of one series from its CSV row and header summary.

    Only the listed fields are copied; nothing else of the headers reaches the manifest.
    """
    uid = row.SeriesInstanceUID
    if summary.series_uid != uid:
        logger.warning("series %s: its files carry SeriesInstanceUID %s", uid, summary.series_uid)
    if not summary.patient_id:
        logger.warning(
            "series %s: no PatientID in the headers; it is grouped as its own patient", uid
        )
    return {
        "SeriesInstanceUID": uid,
        "PatientID": summary.patient_id or None,
        "PatientAge": row.PatientAge,
        "PatientSex": row.PatientSex,
        "Modality": row.Modality,
        "subtype": summary.subtype,
        "subtype_note": subtype_note(row.Modality, summary),
        "labels": list(row.labels),
        "series_dir": f"{SERIES_FOLDER}/{uid}",
        "file_count": summary.file_count,
        "frame_count": summary.frame_count,
        "rows": summary.rows,
        "columns": summary.columns,
        "pixel_spacing_mm": list(summary.pixel_spacing_mm),
        "orientation": summary.orientation,
        "transfer_syntaxes": list(summary.transfer_syntaxes),
        "localizers": usable_localizers(uid, localizers, summary),
    }


def _records_from_folders(
    data_root: Path, rows: list[TrainRow], localizers: dict[str, list[dict]], workers: int
) -> tuple[list[dict], list[dict]]:
    """Return records of the rows whose folder has a usable series, and rejects of the rest."""
    present: list[TrainRow] = []
    rejects: list[dict] = []
    for row in rows:
        uid = row.SeriesInstanceUID
        if (data_root / SERIES_FOLDER / uid).is_dir():
            present.append(row)
        else:
            rejects.append(
                _reject(
                    uid,
                    f"series folder {SERIES_FOLDER}/{uid} not found in {data_root}; check "
                    "that the download is complete, or remove the row from train.csv",
                )
            )

    folders = [data_root / SERIES_FOLDER / row.SeriesInstanceUID for row in present]
    results = scan_series_folders(folders, workers=workers)
    records = []
    for row, result in zip(present, results, strict=True):
        uid = row.SeriesInstanceUID
        if isinstance(result, str):
            rejects.append(_reject(uid, result))
        else:
            records.append(manifest_record(row, result, localizers.get(uid, [])))
    return records, rejects


def build_manifest(
    *,
    data_root: str | os.PathLike,
    out_path: str | os.PathLike,
    rejects_path: str | os.PathLike,
    workers: int = 0,
) -> ManifestResult:
    """Write the manifest of ``data_root`` to ``out_path`` and its rejects to ``rejects_path``.

    Both files are JSON lines, written atomically, in train.csv order. ``workers`` is the
    number of header-reading processes, 0 for one per CPU core. Raises ManifestError when
    a CSV is missing or malformed, or when no series is usable. In the latter case the
    rejects file is still written and an older manifest at ``out_path`` is removed, so
    that no stale manifest disagrees with it.
    """
    data_root = Path(data_root)
    rows, rejects = read_train_csv(data_root / TRAIN_CSV)
    localizers = read_localizers(
        data_root / LOCALIZERS_CSV, {row.SeriesInstanceUID for row in rows}
    )
    records, folder_rejects = _records_from_folders(data_root, rows, localizers, workers)
    rejects.extend(folder_rejects)

    write_jsonl(rejects_path, rejects)
    if not records:
        Path(out_path).unlink(missing_ok=True)
        raise ManifestError(
            f"no usable series in {data_root}: {len(rejects)} rejected, reasons in "
            f"{rejects_path}; check that data.root contains train.csv and "
            "series/<SeriesInstanceUID>/ folders of DICOM files"
        )
    write_jsonl(out_path, records)

    localizer_count = sum(len(record["localizers"]) for record in records)
    logger.info(
        "manifest: %d series (%d localizer points) written to %s; %d rejected, listed in %s",
        len(records),
        localizer_count,
        out_path,
        len(rejects),
        rejects_path,
    )
    return ManifestResult(records=len(records), rejects=len(rejects), localizers=localizer_count)
