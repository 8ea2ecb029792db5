"""Incremental-run state of the preprocessing runner, kept apart from the volumes index.

The volumes index describes the saved volumes and nothing else, so its bytes change only
when a volume or its geometry changes, and the stages that read it rerun only then. What
incremental runs need is in the state file: JSON lines sorted by SeriesInstanceUID, one
per volume, each the volume's index record plus ``key``, the fingerprint of its series
files, the volume spec and the voxel code (see :mod:`rsna.preprocess.fingerprint`). A code
change that leaves the volumes byte-identical changes every key, so every series is
processed again, but the index comes out the same.

A run reuses a volume only through a state entry, taken from the state file or from the
journal (``<out_dir>/.journal.jsonl``). Each volume is appended to the journal as soon as
it is written, so a run killed halfway loses at most the series in flight. The previous
index is read only for the names of the volumes that earlier runs wrote.
"""

import contextlib
import dataclasses
import json
import logging
from pathlib import Path

from rsna.fileio import read_jsonl

logger = logging.getLogger(__name__)

JOURNAL_NAME = ".journal.jsonl"
# File name of the state when the caller names none: beside the index.
DEFAULT_STATE_NAME = "incremental_state.jsonl"
# Fields of a state entry that the index leaves out.
STATE_ONLY_FIELDS = ("key",)
_REQUIRED_STATE_FIELDS = ("SeriesInstanceUID", "file", "sha256", "key")


class StateFileError(ValueError):
    """A state file whose content is not one state entry per line."""


@dataclasses.dataclass(frozen=True)
class KnownVolumes:
    """Reusable state entries and names of volume files, both left by earlier runs.

    ``entries`` are those of the state file, then those of the journal of a killed run,
    so a later entry with the same key replaces an earlier one. ``files`` are the volume
    file names that the previous index, the state file or the journal list.
    """

    entries: list[dict]
    files: set[str]


def state_entry(record: dict, *, key: str) -> dict:
    """Return the state entry of a volume: its index record plus its fingerprint key."""
    return {**record, "key": key}


def index_record(entry: dict) -> dict:
    """Return the index record of a state entry, without the fields of incremental runs."""
    return {name: value for name, value in entry.items() if name not in STATE_ONLY_FIELDS}


def load_known_volumes(*, state_path: Path, index_path: Path, journal_path: Path) -> KnownVolumes:
    """Read the state file, the journal of a killed run and the names in the previous index.

    A missing or unreadable state file is logged on one INFO line and gives no entries,
    so every series outside the journal is processed again.
    """
    journal = _read_journal(journal_path)
    try:
        state = read_state(state_path)
    except FileNotFoundError:
        state = []
        _log_state_unusable(state_path, problem="not found", journal_entries=len(journal))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, StateFileError) as error:
        state = []
        problem = f"unreadable ({error})"
        _log_state_unusable(state_path, problem=problem, journal_entries=len(journal))

    files = {entry["file"] for entry in [*state, *journal]} | _index_file_names(index_path)
    return KnownVolumes(entries=[*state, *journal], files=files)


def read_state(path: Path) -> list[dict]:
    """Return the entries of a state file, or raise :class:`StateFileError` for a bad one."""
    entries = read_jsonl(path)
    for number, entry in enumerate(entries, start=1):
        if not _is_state_entry(entry):
            raise StateFileError(
                f"{path} entry {number} is not an object with the text fields "
                f"{list(_REQUIRED_STATE_FIELDS)}; the next preprocessing run rewrites the file"
            )
    return entries


def _log_state_unusable(path: Path, *, problem: str, journal_entries: int) -> None:
    if journal_entries:
        logger.info(
            "incremental state %s %s, so only the %d volumes in the journal of a killed run "
            "can be reused",
            path,
            problem,
            journal_entries,
        )
    else:
        logger.info("incremental state %s %s, so every series is processed", path, problem)


def _is_state_entry(entry: object) -> bool:
    return isinstance(entry, dict) and all(
        isinstance(entry.get(name), str) for name in _REQUIRED_STATE_FIELDS
    )


def _read_journal(path: Path) -> list[dict]:
    """Return the state entries of a killed run's journal, ignoring a line cut short."""
    if not path.is_file():
        return []
    entries = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            with contextlib.suppress(json.JSONDecodeError):
                entries.append(json.loads(line))
    return [entry for entry in entries if _is_state_entry(entry)]


def _index_file_names(path: Path) -> set[str]:
    """Return the volume file names of a previous index, or none when it cannot be read.

    Keys that an index of an older version still carries are ignored: only state entries
    are reused, so the first run after the upgrade processes every series once.
    """
    try:
        records = read_jsonl(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return set()
    return {
        record["file"]
        for record in records
        if isinstance(record, dict) and isinstance(record.get("file"), str)
    }
