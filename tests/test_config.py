import dataclasses

import pytest

from rsna.config import (
    ParamsError,
    dataclass_to_section,
    load_section,
    resolve_params_file,
    section_to_dataclass,
)


@dataclasses.dataclass(frozen=True)
class _Settings:
    spacing_mm: tuple[float, float, float]
    workers: int = 0


def test_section_to_dataclass_converts_lists():
    settings = section_to_dataclass(_Settings, {"spacing_mm": [1.0, 2.0, 3.0]}, section="s")
    assert settings == _Settings(spacing_mm=(1.0, 2.0, 3.0), workers=0)
    assert dataclass_to_section(settings) == {"spacing_mm": [1.0, 2.0, 3.0], "workers": 0}


def test_section_to_dataclass_rejects_unknown_key():
    with pytest.raises(ParamsError, match=r"unknown keys \['worker'\]; valid keys"):
        section_to_dataclass(_Settings, {"spacing_mm": [1, 1, 1], "worker": 2}, section="s")


def test_section_to_dataclass_rejects_missing_key():
    with pytest.raises(ParamsError, match=r"missing keys \['spacing_mm'\]"):
        section_to_dataclass(_Settings, {}, section="s")


def test_load_section_names_missing_section(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 0.1\n")

    assert load_section(path, "train") == {"lr": 0.1}
    with pytest.raises(ParamsError, match="no mapping named 'split'"):
        load_section(path, "split")


def test_resolve_params_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_params_file(None) is None

    (tmp_path / "params.yaml").write_text("a: {}\n")
    assert resolve_params_file(None).name == "params.yaml"
    with pytest.raises(ParamsError, match="not found"):
        resolve_params_file(tmp_path / "missing.yaml")
