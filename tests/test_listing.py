"""The raw-data listing: exact digests, and which changes alter them."""

import hashlib
import json
import logging
import os

import pytest

from rsna.listing import ListingError, list_series_folders, write_series_listing
from rsna.sample import FILE_MTIME_S, write_sample_dataset

MTIME_NS = 1_700_000_000_000_000_000


def make_file(path, content: bytes, mtime_ns: int = MTIME_NS):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def series_root(tmp_path):
    root = tmp_path / "series"
    make_file(root / "1.2.3" / "b.dcm", b"12345")
    make_file(root / "1.2.3" / "a.dcm", b"12")
    make_file(root / "1.2.4" / "c.dcm", b"")
    return root


def test_digest_covers_names_sizes_times(series_root):
    listing = list_series_folders(series_root)

    expected = hashlib.sha256(
        f"a.dcm\0{2}\0{MTIME_NS}\nb.dcm\0{5}\0{MTIME_NS}\n".encode()
    ).hexdigest()
    assert [(item.name, item.files) for item in listing] == [("1.2.3", 2), ("1.2.4", 1)]
    assert listing[0].sha256 == expected


@pytest.mark.parametrize(
    "change",
    ["add a file", "rewrite a file", "touch a file", "remove a file", "add a series"],
)
def test_file_changes_change_listing(series_root, change):
    before = list_series_folders(series_root)

    if change == "add a file":
        make_file(series_root / "1.2.3" / "d.dcm", b"1")
    elif change == "rewrite a file":
        make_file(series_root / "1.2.3" / "a.dcm", b"123")
    elif change == "touch a file":
        make_file(series_root / "1.2.3" / "a.dcm", b"12", mtime_ns=MTIME_NS + 1)
    elif change == "remove a file":
        (series_root / "1.2.3" / "b.dcm").unlink()
    else:
        make_file(series_root / "1.2.5" / "e.dcm", b"")

    assert list_series_folders(series_root) != before


def test_skipped_files_leave_listing_alone(series_root, caplog):
    before = list_series_folders(series_root)

    make_file(series_root / "1.2.3" / ".DS_Store", b"x")
    (series_root / "1.2.3" / "nested").mkdir()
    make_file(series_root / "README.txt", b"not a series")
    with caplog.at_level(logging.WARNING, logger="rsna.listing"):
        after = list_series_folders(series_root)

    assert after == before
    assert "README.txt is not a series folder" in caplog.text


def test_writes_one_line_per_series(series_root, tmp_path):
    out_path = tmp_path / "listing.jsonl"

    count = write_series_listing(series_root=series_root, out_path=out_path)

    lines = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert count == 2
    assert [line["name"] for line in lines] == ["1.2.3", "1.2.4"]
    assert set(lines[0]) == {"name", "files", "sha256"}


def test_missing_series_folder_raises(tmp_path):
    with pytest.raises(ListingError, match=r"series folder .*missing.* set data.root"):
        list_series_folders(tmp_path / "missing")


def test_sample_listing_is_reproducible(tmp_path):
    first = tmp_path / "first"
    second = tmp_path / "second"

    write_sample_dataset(first, series=2, seed=5, matrix=16, slices=8, workers=1)
    write_sample_dataset(second, series=2, seed=5, matrix=16, slices=8, workers=1)

    one_file = next((first / "series").rglob("*.dcm"))
    assert one_file.stat().st_mtime == FILE_MTIME_S
    assert list_series_folders(first / "series") == list_series_folders(second / "series")
