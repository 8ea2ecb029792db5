"""Atomic writes: an output file either has its complete new content or does not exist.

Every writer here writes to a temporary file in the destination folder, flushes it to
disk and renames it over the destination. Renaming is atomic on POSIX file systems
when both names are on one file system, so a crash or ``SIGKILL`` leaves either the old
file or the new one, plus at most a ``.tmp-*`` file that :func:`remove_stale_temporaries`
cleans up.
"""

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

TEMPORARY_PREFIX = ".tmp-"
_DEFAULT_FILE_MODE = 0o666


class OutputPathError(ValueError):
    """An output folder that cannot be created because a file is in the way."""


def check_output_folder(folder: str | os.PathLike) -> None:
    """Raise :class:`OutputPathError` when ``folder`` or a parent exists but is not a folder.

    Commands call this before their work, so a mistyped output path fails at once instead
    of after minutes of computing.
    """
    folder = Path(folder)
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise OutputPathError(
                    f"output folder {folder} cannot be created because {candidate} is a file; "
                    "choose another output path"
                )
            return


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``destination`` and rename it there on success.

    The caller writes the temporary path. On an exception the temporary file is removed
    and ``destination`` is left untouched.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(
        prefix=TEMPORARY_PREFIX + destination.name + ".", dir=destination.parent
    )
    os.close(handle)
    temporary = Path(name)
    # mkstemp creates the file readable by its owner only; give the output the permissions
    # an ordinary open() would, so teammates on a shared machine can read it.
    temporary.chmod(_DEFAULT_FILE_MODE & ~_current_umask())
    try:
        yield temporary
        _fsync_file(temporary)
        temporary.replace(destination)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(destination: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces ``destination`` on success."""
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(destination) as temporary, open(temporary, mode, encoding=encoding) as handle:
        yield handle


def write_text(destination: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``destination`` atomically, in UTF-8."""
    with atomic_open(destination) as handle:
        handle.write(text)


def write_json(destination: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` as indented JSON atomically, with a final newline."""
    write_text(destination, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_jsonl(destination: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write one JSON object per line atomically."""
    with atomic_open(destination) as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=False) + "\n")


def read_jsonl(source: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file written by :func:`write_jsonl`; blank lines are skipped."""
    with open(source, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def save_npy(destination: str | os.PathLike, array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` atomically, so no reader ever sees a truncated file."""
    with atomic_path(destination) as temporary, open(temporary, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporary files left in ``folder`` by a killed writer; return how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.glob(TEMPORARY_PREFIX + "*"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
