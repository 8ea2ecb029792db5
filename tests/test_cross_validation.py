"""Cross-validation: aggregation of fold metrics and the layout of cv/dvc.yaml."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from rsna import cross_validation
from rsna.labels import ANEURYSM_PRESENT, LABEL_COLUMNS, LOCATION_COLUMNS

REPO = Path(__file__).resolve().parents[1]
BASILAR = "Basilar Tip"


def _fold_metrics(
    score: float | None, present_auc: float | None, basilar_auc: float | None
) -> dict:
    auc = {label: 0.5 for label in LOCATION_COLUMNS}
    auc[ANEURYSM_PRESENT] = present_auc
    auc[BASILAR] = basilar_auc
    return {"challenge_score": score, "auc": auc, "auc_by_modality": {"CTA": 0.7}}


def test_summarize_exact_values():
    summary = cross_validation.summarize([0.8, None, 0.9, 1.0])

    assert summary["count"] == 3
    assert summary["mean"] == pytest.approx(0.9, abs=1e-12)
    # Sample standard deviation: sqrt((0.01 + 0 + 0.01) / 2) = 0.1.
    assert summary["std"] == pytest.approx(0.1, abs=1e-12)
    assert summary["min"] == 0.8
    assert summary["max"] == 1.0


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.7], {"mean": 0.7, "std": None, "min": 0.7, "max": 0.7, "count": 1}),
        ([None, None], {"mean": None, "std": None, "min": None, "max": None, "count": 0}),
        ([], {"mean": None, "std": None, "min": None, "max": None, "count": 0}),
    ],
)
def test_summarize_few_values(values, expected):
    assert cross_validation.summarize(values) == expected


def test_aggregate_fold_metrics_exact():
    folds = {
        0: _fold_metrics(0.80, 0.90, None),
        1: _fold_metrics(0.90, 0.80, 0.60),
        2: _fold_metrics(0.85, 0.70, 0.80),
    }

    summary = cross_validation.aggregate_fold_metrics(folds)

    assert summary["folds"] == [0, 1, 2]
    assert summary["fold_challenge_score"] == {"fold0": 0.80, "fold1": 0.90, "fold2": 0.85}
    assert summary["challenge_score"]["mean"] == pytest.approx(0.85, abs=1e-12)
    assert summary["challenge_score"]["std"] == pytest.approx(0.05, abs=1e-12)
    assert summary["auc"][ANEURYSM_PRESENT]["mean"] == pytest.approx(0.8, abs=1e-12)
    assert summary["auc"][ANEURYSM_PRESENT]["std"] == pytest.approx(0.1, abs=1e-12)
    # Fold 0 has a single class for Basilar Tip, so only folds 1 and 2 count.
    assert summary["auc"][BASILAR]["count"] == 2
    assert summary["auc"][BASILAR]["mean"] == pytest.approx(0.7, abs=1e-12)
    assert list(summary["auc"]) == list(LABEL_COLUMNS)


def test_aggregate_leaves_out_undefined_fold(caplog):
    folds = {0: _fold_metrics(None, None, None), 1: _fold_metrics(0.9, 0.9, 0.9)}

    with caplog.at_level(logging.WARNING):
        summary = cross_validation.aggregate_fold_metrics(folds)

    assert summary["challenge_score"] == {
        "mean": 0.9,
        "std": None,
        "min": 0.9,
        "max": 0.9,
        "count": 1,
    }
    assert "fold 0 has an undefined challenge score" in caplog.text
    assert "spread between folds is undefined" in caplog.text


def test_aggregate_rejects_all_undefined():
    with pytest.raises(ValueError, match=r"no fold among \[0, 1\] has a defined challenge_score"):
        cross_validation.aggregate_fold_metrics(
            {0: _fold_metrics(None, None, None), 1: _fold_metrics(None, None, None)}
        )


def test_fold_paths_expand_pattern():
    assert cross_validation.fold_paths("cv/evaluate/fold{fold}.json", [0, 2]) == {
        0: Path("cv/evaluate/fold0.json"),
        2: Path("cv/evaluate/fold2.json"),
    }


@pytest.mark.parametrize(
    ("pattern", "folds", "message"),
    [
        ("cv/evaluate.json", [0], r"lacks \{fold\}"),
        ("cv/fold{fold}.json", [0, 0], r"folds \[0, 0\] are invalid"),
        ("cv/fold{fold}.json", [-1], r"folds \[-1\] are invalid"),
    ],
)
def test_fold_paths_reject(pattern, folds, message):
    with pytest.raises(ValueError, match=message):
        cross_validation.fold_paths(pattern, folds)


def test_read_fold_metrics_errors(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"metrics of fold 3 not found .*`dvc repro cv/dvc.yaml`"
    ):
        cross_validation.read_fold_metrics({3: tmp_path / "missing.json"})

    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match=r"metrics of fold 0 at .* are not valid JSON"):
        cross_validation.read_fold_metrics({0: broken})

    no_auc = tmp_path / "no_auc.json"
    no_auc.write_text('{"challenge_score": 0.5}')
    with pytest.raises(ValueError, match="lack challenge_score or auc"):
        cross_validation.read_fold_metrics({0: no_auc})

    text_score = tmp_path / "text_score.json"
    text_score.write_text('{"challenge_score": "high", "auc": {}}')
    with pytest.raises(ValueError, match="challenge_score 'high' is not a number or null"):
        cross_validation.read_fold_metrics({0: text_score})


def _write_fold_files(root: Path, folds: dict[int, float]) -> None:
    (root / "evaluate").mkdir(parents=True)
    (root / "train").mkdir(parents=True)
    for fold, score in folds.items():
        metrics = _fold_metrics(score, score, score)
        (root / "evaluate" / f"fold{fold}.json").write_text(json.dumps(metrics))
        (root / "train" / f"fold{fold}_history.csv").write_text(
            "epoch,train_loss,val_loss,val_score,lr\n1,0.7,0.8,0.5,0.001\n2,0.5,0.6,"
            f"{score},0.0005\n"
        )


def test_write_cv_summary_outputs(tmp_path):
    _write_fold_files(tmp_path, {0: 0.8, 1: 0.9})

    summary = cross_validation.write_cv_summary(
        folds=[0, 1],
        fold_metrics_pattern=str(tmp_path / "evaluate" / "fold{fold}.json"),
        fold_history_pattern=str(tmp_path / "train" / "fold{fold}_history.csv"),
        summary_path=tmp_path / "metrics.json",
        auc_path=tmp_path / "auc.json",
        picture_path=tmp_path / "plots" / "folds.png",
    )

    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == {
        key: summary[key] for key in ("folds", "challenge_score", "fold_challenge_score")
    }
    assert json.loads((tmp_path / "auc.json").read_text()) == {"auc": summary["auc"]}
    assert summary["challenge_score"]["mean"] == pytest.approx(0.85, abs=1e-12)
    assert imread(tmp_path / "plots" / "folds.png").shape[:2] == (360, 1200)


def test_aggregate_stage_reads_cv_params(tmp_path):
    _write_fold_files(tmp_path, {0: 0.8, 1: 0.9, 2: 0.7})
    params = tmp_path / "params.yaml"
    params.write_text("cv:\n  folds: [0, 2]\n")

    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "stages" / "cv_aggregate.py"),
            "--params",
            str(params),
            "--fold-metrics",
            str(tmp_path / "evaluate" / "fold{fold}.json"),
            "--auc",
            str(tmp_path / "auc.json"),
            "--summary",
            str(tmp_path / "metrics.json"),
            "--picture",
            str(tmp_path / "folds.png"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["fold_challenge_score"] == {"fold0": 0.8, "fold2": 0.7}


# cv/dvc.yaml -------------------------------------------------------------------------


def _load_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def test_cv_folds_param_fits_split_folds():
    params = _load_yaml(REPO / "params.yaml")
    folds = params["cv"]["folds"]

    assert len(set(folds)) == len(folds)
    assert set(folds) <= set(range(params["split"]["folds"]))


def test_cv_pipeline_loops_over_folds():
    pipeline = _load_yaml(REPO / "cv" / "dvc.yaml")
    stages = pipeline["stages"]

    assert pipeline["vars"] == ["../params.yaml:cv"]
    for name in ("train", "evaluate"):
        assert stages[name]["foreach"] == "${cv.folds}"
        assert stages[name]["do"]["wdir"] == ".."
        assert "--fold ${item}" in stages[name]["do"]["cmd"]
    assert stages["aggregate"]["wdir"] == ".."
    assert stages["aggregate"]["params"] == ["cv.folds"]


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"
    # Stages run `python`: the interpreter of this test run, even when its venv is not active.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(
        [dvc, *args], cwd=repo, capture_output=True, text=True, env=env, timeout=300, check=False
    )


def _project_copy(tmp_path: Path, *, root_pipeline: str | None, params: dict | None = None) -> Path:
    """Copy params.yaml (or write ``params``), cv/, stages/ and rsna/ into a new git + DVC repo."""
    repo = tmp_path / "project"
    repo.mkdir()
    if params is None:
        shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    else:
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for folder in ("cv", "stages", "rsna"):
        shutil.copytree(
            REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.lock")
        )
    if root_pipeline is None:
        shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    else:
        (repo / "dvc.yaml").write_text(root_pipeline)

    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    for command in (("init", "-q"), ("config", "core.analytics", "false")):
        assert _dvc(repo, *command).returncode == 0
    return repo


@pytest.mark.slow
def test_cv_dag_connects_each_fold(tmp_path):
    repo = _project_copy(tmp_path, root_pipeline="stages: {}\n")
    folds = _load_yaml(REPO / "params.yaml")["cv"]["folds"]

    result = _dvc(repo, "dag", "--dot", "cv/dvc.yaml:aggregate")

    assert result.returncode == 0, result.stderr
    for fold in folds:
        train, evaluate = f"cv/dvc.yaml:train@{fold}", f"cv/dvc.yaml:evaluate@{fold}"
        assert f'"{train}" -> "{evaluate}"' in result.stdout
        assert f'"{evaluate}" -> "cv/dvc.yaml:aggregate"' in result.stdout
    assert result.stdout.count('-> "cv/dvc.yaml:evaluate@') == len(folds)


def _write_dependency_placeholders(repo: Path) -> list[str]:
    """Create an empty file for each missing dependency of the root pipeline.

    `dvc repro --dry` hashes the dependencies of every stage it lists and fails on a
    missing one, even when an upstream stage would write it. Returns the stage names.
    """
    data_root = _load_yaml(repo / "params.yaml")["data"]["root"]
    stages = _load_yaml(repo / "dvc.yaml")["stages"]
    for stage in stages.values():
        for dependency in stage.get("deps", []):
            path = repo / dependency.replace("${data.root}", data_root)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("")
    return list(stages)


@pytest.mark.slow
def test_default_repro_leaves_cv_out(tmp_path):
    if not (REPO / "dvc.yaml").is_file():
        pytest.skip("the root dvc.yaml does not exist yet")
    repo = _project_copy(tmp_path, root_pipeline=None)
    root_stages = _write_dependency_placeholders(repo)

    default = _dvc(repo, "repro", "--dry")
    listed = _dvc(repo, "stage", "list", "--all")

    assert default.returncode == 0, default.stderr
    ran = re.findall(r"Running stage '([^']+)'", default.stdout)
    assert sorted(ran) == sorted(root_stages)
    assert "cv/dvc.yaml:aggregate" in listed.stdout


# A real cross-validation run: 24 series of (8, 16, 16) voxels, 2 folds, one epoch of a
# ResNet-18 of width 4 on the CPU. It took 60 s on 2 shared cores.
CV_SHAPE = [8, 16, 16]
CV_SERIES = 24
CV_TEST_SERIES = 4


def _write_cv_data(data: Path) -> None:
    """Write volumes, index, manifest and splits in the formats the pipeline stages write."""
    rng = np.random.default_rng(0)
    (data / "volumes").mkdir(parents=True)
    index, manifest, rows = [], [], []
    for i in range(CV_SERIES):
        uid = f"1.2.826.0.1.{i + 1}"
        # Aneurysm Present alternates in pairs, so each fold of i % 2 has both classes.
        labels = [int(value) for value in rng.random(len(LOCATION_COLUMNS)) < 0.5]
        labels.append((i // 2) % 2)
        np.save(data / "volumes" / f"{uid}.npy", (rng.random(CV_SHAPE) * 0.1).astype(np.float16))
        index.append(
            {
                "SeriesInstanceUID": uid,
                "file": f"{uid}.npy",
                "shape": CV_SHAPE,
                "spacing_mm": [2.0, 2.0, 2.0],
                "Modality": "CTA",
                "localizers_zyx": [],
                "key": f"key{i}",
            }
        )
        manifest.append(
            {"SeriesInstanceUID": uid, "PatientID": f"p{i}", "Modality": "CTA", "labels": labels}
        )
        split = "test" if i >= CV_SERIES - CV_TEST_SERIES else "train"
        rows.append(f"{uid},p{i},{split},{-1 if split == 'test' else i % 2}\n")

    (data / "volumes_index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in index))
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in manifest))
    (data / "splits.csv").write_text("SeriesInstanceUID,PatientID,split,fold\n" + "".join(rows))


def _tiny_cv_params() -> dict:
    params = _load_yaml(REPO / "params.yaml")
    params["preprocess"]["shape"] = CV_SHAPE
    params["split"]["folds"] = 2
    params["cv"]["folds"] = [0, 1]
    params["train"] = {
        "epochs": 1,
        "batch_size": 4,
        "model": {"width": 4},
        "num_workers": 0,
        "device": "cpu",
        "threads": 1,
    }
    params["evaluate"] = {"tta_flip": False, "device": "cpu"}
    return params


@pytest.mark.slow
def test_cv_pipeline_runs_two_folds(tmp_path):
    repo = _project_copy(tmp_path, root_pipeline="stages: {}\n", params=_tiny_cv_params())
    _write_cv_data(repo / "data")

    first = _dvc(repo, "repro", "cv/dvc.yaml")
    again = _dvc(repo, "repro", "cv/dvc.yaml")
    status = _dvc(repo, "status", "cv/dvc.yaml")

    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in ("train@0", "train@1", "evaluate@0", "evaluate@1", "aggregate"):
        assert f"Running stage 'cv/dvc.yaml:{stage}'" in first.stdout
    assert "Running stage" not in again.stdout
    assert "up to date" in status.stdout
    summary = json.loads((repo / "cv" / "metrics.json").read_text())
    assert summary["folds"] == [0, 1]
    assert summary["challenge_score"]["count"] == 2
    for fold in (0, 1):
        fold_metrics = json.loads((repo / "cv" / "evaluate" / f"fold{fold}.json").read_text())
        assert summary["fold_challenge_score"][f"fold{fold}"] == fold_metrics["challenge_score"]
        # Fold k is evaluated on its own 10 held-out series, never on the test split.
        assert fold_metrics["series"] == (CV_SERIES - CV_TEST_SERIES) // 2
    auc = json.loads((repo / "cv" / "auc.json").read_text())["auc"]
    assert auc[ANEURYSM_PRESENT]["count"] == 2
    assert imread(repo / "cv" / "plots" / "folds.png").shape[2] == 4
