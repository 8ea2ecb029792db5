"""Checks that dvc.yaml declares what each stage script really reads.

A module a stage imports but does not list as a dependency would let `dvc repro` skip a
stage whose code changed, so its outputs would no longer match the committed code.
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rsna.preprocess.settings import VolumeSpec

REPOSITORY = Path(__file__).resolve().parents[1]
PIPELINE_FILES = ("dvc.yaml", "cv/dvc.yaml")

# Prints the repository-relative files of every rsna module a stage script imports.
_LIST_IMPORTS = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("stage", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
files = sorted({m.__file__ for name, m in sys.modules.items()
                if (name == "rsna" or name.startswith("rsna.")) and getattr(m, "__file__", None)})
print(json.dumps(files))
"""


def _stages() -> list[tuple[str, str, dict]]:
    stages = []
    for pipeline in PIPELINE_FILES:
        definition = yaml.safe_load((REPOSITORY / pipeline).read_text())
        for name, stage in definition["stages"].items():
            body = stage.get("do", stage)
            stages.append((pipeline, name, body))
    return stages


def _stage_script(command: str) -> str:
    words = command.split()
    return words[words.index("python") + 1]


def _imported_rsna_files(script: str) -> list[str]:
    output = subprocess.run(
        [sys.executable, "-c", _LIST_IMPORTS, str(REPOSITORY / script)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [str(Path(path).resolve().relative_to(REPOSITORY)) for path in json.loads(output)]


@pytest.mark.parametrize(("pipeline", "name", "stage"), _stages(), ids=lambda v: str(v)[:40])
def test_stage_declares_imported_modules(pipeline, name, stage):
    script = _stage_script(stage["cmd"])
    deps = [str(dep) for dep in stage["deps"]]

    assert script in deps, f"{pipeline} stage {name}: its script {script} is not a dependency"
    undeclared = [
        path
        for path in _imported_rsna_files(script)
        if not any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)
    ]
    assert undeclared == [], f"{pipeline} stage {name} imports undeclared modules {undeclared}"


@pytest.mark.parametrize(("pipeline", "name", "stage"), _stages(), ids=lambda v: str(v)[:40])
def test_stage_params_are_known_sections(pipeline, name, stage):
    params = yaml.safe_load((REPOSITORY / "params.yaml").read_text())
    for entry in stage.get("params", []):
        section, _, key = str(entry).partition(".")
        assert section in params, f"{pipeline} stage {name}: unknown params section {section}"
        if key:
            assert key in params[section], f"{pipeline} stage {name}: unknown params key {entry}"


def _model_stages() -> list[tuple[str, str, dict]]:
    return [stage for stage in _stages() if "rsna/model.py" in stage[2]["deps"]]


@pytest.mark.parametrize(("pipeline", "name", "stage"), _model_stages(), ids=lambda v: str(v)[:40])
def test_model_stages_list_voxel_settings(pipeline, name, stage):
    # Stages that train or score a model read only the preprocess keys that change the
    # voxels. Listing the whole section would retrain after a change of worker count.
    params = [str(entry) for entry in stage.get("params", [])]
    keys = {entry.partition(".")[2] for entry in params if entry.startswith("preprocess.")}

    assert "preprocess" not in params, f"{pipeline} stage {name} lists all of preprocess"
    assert keys == {field.name for field in dataclasses.fields(VolumeSpec)}
