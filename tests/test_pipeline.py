"""The whole default pipeline, run by the real `dvc` in a temporary git repository.

The session fixture `pipeline_repo` runs `dvc repro` once on a tiny sample; these tests
check what a user sees afterwards: the metrics, a pipeline with nothing to rerun and an
experiment.
"""

import json
import re

import pytest
from pipeline_repo import pipeline_environment, run_command, run_dvc

from rsna.labels import LABEL_COLUMNS

pytest_plugins = ("pipeline_repo",)
pytestmark = pytest.mark.slow


def test_repro_writes_challenge_metrics(pipeline_repo):
    metrics = json.loads((pipeline_repo / "metrics" / "evaluate.json").read_text())

    assert set(metrics["auc"]) == set(LABEL_COLUMNS)
    score = metrics["challenge_score"]
    assert score is None or 0.0 <= score <= 1.0
    defined = [value for value in metrics["auc"].values() if value is not None]
    assert all(0.0 <= value <= 1.0 for value in defined)


def test_repro_writes_every_declared_output(pipeline_repo):
    for relative in (
        "data/manifest.jsonl",
        "data/splits.csv",
        "data/volumes_index.jsonl",
        "data/volumes_state.jsonl",
        "data/raw_listing.jsonl",
        "models/best.pt",
        "models/last.pt",
        "plots/train/history.csv",
        "plots/evaluate/roc.csv",
        "plots/images/curves",
        "plots/images/qc",
    ):
        assert (pipeline_repo / relative).exists(), relative


def test_second_repro_runs_only_listing(pipeline_repo):
    status = json.loads(run_dvc(pipeline_repo, "status", "--json", "dvc.yaml").stdout)
    repro = run_dvc(pipeline_repo, "repro")
    lock_diff = run_command(
        ["git", "diff", "--exit-code", "--", "dvc.lock"],
        cwd=pipeline_repo,
        env=pipeline_environment(pipeline_repo),
        check=False,
    )

    # `listing` is always_changed: it runs every time and leaves the rest up to date.
    assert status == {"listing": ["always changed"]}
    assert re.findall(r"Running stage '([^']+)'", repro.stdout) == ["listing"]
    assert "Stage 'evaluate' didn't change, skipping" in repro.stdout
    assert lock_diff.returncode == 0, lock_diff.stdout


def test_experiment_shows_in_exp_show(pipeline_repo):
    run_dvc(
        pipeline_repo,
        "exp",
        "run",
        "--temp",
        "--name",
        "lower-lr",
        "-S",
        "train.lr=0.001",
        timeout_s=600,
    )

    table = json.loads(run_dvc(pipeline_repo, "exp", "show", "--json").stdout)
    experiments = [
        experiment
        for commit in table
        for experiment in (commit.get("experiments") or [])
        if experiment.get("name") == "lower-lr"
    ]
    assert len(experiments) == 1
    data = experiments[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["lr"] == 0.001
    assert "challenge_score" in data["metrics"]["metrics/evaluate.json"]["data"]
