import json
import os
import stat

import numpy as np
import pytest

from rsna.fileio import (
    atomic_open,
    read_jsonl,
    remove_stale_temporaries,
    save_npy,
    write_json,
    write_jsonl,
)


def test_atomic_open_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("new")
        raise RuntimeError("interrupted")

    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_write_json_and_jsonl_round_trip(tmp_path):
    write_json(tmp_path / "a" / "m.json", {"score": 0.5})
    write_jsonl(tmp_path / "r.jsonl", [{"a": 1}, {"b": [1, 2]}])

    assert json.loads((tmp_path / "a" / "m.json").read_text()) == {"score": 0.5}
    assert read_jsonl(tmp_path / "r.jsonl") == [{"a": 1}, {"b": [1, 2]}]


def test_save_npy_writes_exact_array(tmp_path):
    array = np.arange(24, dtype=np.float16).reshape(2, 3, 4)

    save_npy(tmp_path / "v.npy", array)

    loaded = np.load(tmp_path / "v.npy")
    assert loaded.dtype == np.float16
    np.testing.assert_array_equal(loaded, array)


def test_remove_stale_temporaries(tmp_path):
    (tmp_path / ".tmp-v.npy.abc").write_bytes(b"partial")
    (tmp_path / "v.npy").write_bytes(b"keep")

    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["v.npy"]


def test_atomic_write_uses_umask_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {})
    finally:
        os.umask(previous)

    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
