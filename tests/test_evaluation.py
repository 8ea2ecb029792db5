import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from training_fixtures import tiny_train_section, train_checkpoint, write_dataset, write_params

from rsna.evaluation import (
    evaluate_checkpoint,
    predict_probabilities,
    predict_volume,
    prepare_image,
)
from rsna.labels import LABEL_COLUMNS, left_right_permutation
from rsna.training.checkpoint import IncompatibleCheckpointError, model_from_checkpoint

REPOSITORY = Path(__file__).resolve().parents[1]
VOLUME_SPEC = {
    "spacing_mm": [2.0, 2.0, 2.0],
    "shape": [16, 32, 32],
    "ct_window_hu": [-100.0, 600.0],
    "mr_percentiles": [1.0, 99.0],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A dataset and a checkpoint trained on it for two epochs."""
    root = tmp_path_factory.mktemp("evaluation")
    data = write_dataset(root / "data")
    checkpoint = train_checkpoint(
        root, data, train_section=tiny_train_section(), volume_spec=VOLUME_SPEC
    )
    return {**data, "root": root, "checkpoint": checkpoint}


def _evaluate(trained, out: Path, **kwargs):
    return evaluate_checkpoint(
        checkpoint_path=trained["checkpoint"],
        volume_spec=VOLUME_SPEC,
        volumes_dir=trained["volumes"],
        index_path=trained["index"],
        splits_path=trained["splits"],
        manifest_path=trained["manifest"],
        metrics_path=out / "evaluate.json",
        roc_path=out / "roc.csv",
        predictions_path=out / "predictions.csv",
        device="cpu",
        **kwargs,
    )


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_writes_metrics_roc_and_predictions(trained, tmp_path):
    metrics = _evaluate(trained, tmp_path, tta_flip=True)

    assert json.loads((tmp_path / "evaluate.json").read_text()) == metrics
    assert list(metrics["auc"]) == list(LABEL_COLUMNS)
    assert metrics["series"] == 12
    assert metrics["tta_flip"] is True
    assert sorted(metrics["modality"]) == ["CTA", "MRA"]
    assert metrics["modality"]["CTA"]["series"] == 6
    assert set(metrics["modality"]["MRA"]) == {"series", "challenge_score", "auc"}
    header = (tmp_path / "predictions.csv").read_text().splitlines()[0]
    assert header.split(",") == ["SeriesInstanceUID", *LABEL_COLUMNS]
    assert len(_read_csv(tmp_path / "predictions.csv")) == 12
    roc = _read_csv(tmp_path / "roc.csv")
    assert list(roc[0]) == ["label", "fpr", "tpr"]
    assert {row["label"] for row in roc} == {
        name for name, auc in metrics["auc"].items() if auc is not None
    }


def test_predictions_match_single_volume_path(trained, tmp_path):
    _evaluate(trained, tmp_path, tta_flip=True, batch_size=5)
    model, checkpoint = model_from_checkpoint(trained["checkpoint"])

    for row in _read_csv(tmp_path / "predictions.csv"):
        volume = np.load(trained["volumes"] / f"{row['SeriesInstanceUID']}.npy")
        expected = predict_volume(
            model, volume, input_shape=checkpoint["params"]["train"]["input_shape"], tta_flip=True
        )
        actual = np.array([float(row[name]) for name in LABEL_COLUMNS])
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


def test_flip_tta_is_mirror_symmetric(trained):
    model, _ = model_from_checkpoint(trained["checkpoint"])
    volume = np.load(next(trained["volumes"].glob("*.npy")))
    image = prepare_image(volume, input_shape=None)
    mirrored = torch.flip(image, dims=[-1])

    direct = predict_probabilities(model, image, tta_flip=True)
    from_mirror = predict_probabilities(model, mirrored, tta_flip=True)[:, left_right_permutation()]
    plain = predict_probabilities(model, image, tta_flip=False)

    assert torch.equal(direct, from_mirror)
    assert not torch.equal(direct, plain)


def test_prepare_image_crops_to_input_shape():
    volume = np.arange(4 * 6 * 8, dtype=np.float16).reshape(4, 6, 8)

    image = prepare_image(volume, input_shape=(2, 6, 4))

    assert image.shape == (1, 1, 2, 6, 4)
    assert torch.equal(image[0, 0], torch.from_numpy(volume[1:3, :, 2:6].astype(np.float32)))


def test_evaluate_rejects_other_preprocessing(trained, tmp_path):
    with pytest.raises(
        IncompatibleCheckpointError,
        match=r"preprocess.ct_window_hu: \[-100.0, 600.0\] -> \[0.0, 400.0\]",
    ):
        evaluate_checkpoint(
            checkpoint_path=trained["checkpoint"],
            volume_spec={**VOLUME_SPEC, "ct_window_hu": [0.0, 400.0]},
            volumes_dir=trained["volumes"],
            index_path=trained["index"],
            splits_path=trained["splits"],
            manifest_path=trained["manifest"],
            metrics_path=tmp_path / "m.json",
            roc_path=tmp_path / "r.csv",
            predictions_path=tmp_path / "p.csv",
            device="cpu",
        )
    assert not (tmp_path / "m.json").exists()


def _load_evaluate_stage():
    spec = importlib.util.spec_from_file_location(
        "evaluate_stage", REPOSITORY / "stages" / "evaluate.py"
    )
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    return stage


def _stage_argv(trained, out: Path, params: Path, **paths) -> list[str]:
    """Return stages/evaluate.py arguments; ``paths`` replaces inputs such as ``volumes``."""
    inputs = {key: trained[key] for key in ("checkpoint", "volumes", "index", "splits")}
    inputs = {**inputs, "manifest": trained["manifest"], **paths}
    argv = ["--params", str(params)]
    for key, value in inputs.items():
        argv += [f"--{key}", str(value)]
    argv += ["--metrics", str(out / "evaluate.json"), "--roc", str(out / "roc.csv")]
    return [*argv, "--predictions", str(out / "predictions.csv")]


def test_evaluate_stage_on_fold(trained, tmp_path):
    stage = _load_evaluate_stage()
    params = write_params(
        tmp_path / "params.yaml",
        train=tiny_train_section(),
        evaluate={"device": "cpu", "tta_flip": False},
    )

    status = stage.main([*_stage_argv(trained, tmp_path, params), "--fold", "1"])

    assert status == 0
    metrics = json.loads((tmp_path / "evaluate.json").read_text())
    # Fold 1 of the 36 train and val series: every second one.
    assert metrics["series"] == 18
    assert metrics["tta_flip"] is False


def test_preprocess_reject_skipped_not_failing(trained, tmp_path, caplog):
    index = [json.loads(line) for line in trained["index"].read_text().splitlines()]
    rejected = index[36]["SeriesInstanceUID"]
    kept = [record for record in index if record["SeriesInstanceUID"] != rejected]
    (tmp_path / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))

    metrics = _evaluate(
        {**trained, "index": tmp_path / "index.jsonl"}, tmp_path, max_bad_fraction=0.05
    )

    assert metrics["series"] == 11
    assert metrics["skipped_series"] == 1
    assert metrics["preprocess_rejected_series"] == 1
    assert f"Series {rejected} skipped from test: rejected by the preprocess stage" in caplog.text
    uids = [row["SeriesInstanceUID"] for row in _read_csv(tmp_path / "predictions.csv")]
    assert rejected not in uids


def _other_window_params(path: Path) -> Path:
    params = yaml.safe_load(path.read_text())
    params["preprocess"]["ct_window_hu"] = [0.0, 400.0]
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize(
    ("evaluate", "change", "message"),
    [
        (
            {"device": "cpu", "tta_flips": True},
            None,
            "params section 'evaluate' has unknown keys ['tta_flips']",
        ),
        (
            {"device": "cpu"},
            "window",
            "was trained with other params: preprocess.ct_window_hu: [-100.0, 600.0] -> "
            "[0.0, 400.0]. Use a checkpoint trained with these params, or retrain",
        ),
        (
            {"device": "cpu"},
            "no-volumes",
            "no usable test volume: 12 of 12 series have a missing or unusable volume",
        ),
        ({"device": "cpu"}, "no-checkpoint", "none.pt not found; run the train stage first"),
    ],
    ids=["unknown-key", "other-preprocessing", "no-volumes", "no-checkpoint"],
)
def test_evaluate_stage_error_one_line(trained, tmp_path, capsys, evaluate, change, message):
    stage = _load_evaluate_stage()
    params = write_params(tmp_path / "params.yaml", train=tiny_train_section(), evaluate=evaluate)
    paths = {}
    if change == "window":
        _other_window_params(params)
    elif change == "no-volumes":
        paths["volumes"] = tmp_path / "empty"
    elif change == "no-checkpoint":
        paths["checkpoint"] = tmp_path / "none.pt"

    status = stage.main(_stage_argv(trained, tmp_path, params, **paths))

    assert status == 1
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1
    assert message in errors[0]
    assert "Traceback" not in stderr
    assert not (tmp_path / "evaluate.json").exists()
