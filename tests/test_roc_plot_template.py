"""The ROC plot of dvc.yaml, rendered by the real `dvc plots show` with the project template.

plots/evaluate/roc.csv contains the curves of all 14 labels in one table. DVC's built-in
templates would draw them as one zigzag line, so the project's template colours by label.
"""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from rsna.labels import LABEL_COLUMNS

REPOSITORY = Path(__file__).resolve().parents[1]
ROC_CSV = "plots/evaluate/roc.csv"


def _roc_definition() -> dict:
    pipeline = yaml.safe_load((REPOSITORY / "dvc.yaml").read_text())
    for output in pipeline["stages"]["evaluate"]["plots"]:
        if isinstance(output, dict) and ROC_CSV in output:
            return output[ROC_CSV]
    raise AssertionError(f"dvc.yaml stage evaluate declares no plot {ROC_CSV}")


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"
    return subprocess.run(
        [dvc, *args],
        cwd=repo,
        env={"PATH": str(Path(sys.executable).parent), "DVC_NO_ANALYTICS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def _write_repo(repo: Path) -> None:
    """A git and DVC repository with the project's templates and a two-point ROC per label."""
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    shutil.copytree(REPOSITORY / ".dvc" / "plots", repo / ".dvc" / "plots")
    definition = {key: value for key, value in _roc_definition().items() if key != "cache"}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{ROC_CSV: definition}]}))

    (repo / ROC_CSV).parent.mkdir(parents=True)
    with open(repo / ROC_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "fpr", "tpr"])
        for label in LABEL_COLUMNS:
            writer.writerows([(label, 0.0, 0.0), (label, 1.0, 1.0)])


def test_roc_plot_colours_by_label(tmp_path):
    _write_repo(tmp_path)

    shown = json.loads(_dvc(tmp_path, "plots", "show", "--json").stdout)

    spec = shown["data"][ROC_CSV][0]["content"]
    assert spec["encoding"]["color"]["field"] == "label"
    assert spec["encoding"]["x"]["field"] == "fpr"
    assert spec["encoding"]["y"]["field"] == "tpr"
    labels = [point["label"] for point in spec["data"]["values"]]
    assert sorted(set(labels)) == sorted(LABEL_COLUMNS)
    assert len(labels) == 2 * len(LABEL_COLUMNS)
