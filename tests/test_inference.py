"""Inference on DICOM series: ``rsna predict`` and :func:`rsna.inference.predict`.

A tiny network is trained for three epochs on synthetic volumes. Synthetic DICOM series are
preprocessed by the preprocess stage's runner and scored by the evaluate stage, and the
inference paths must reproduce those numbers from the DICOM folders.
"""

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from dicom_builders import head_ct_values, write_series
from training_fixtures import (
    preprocess_section,
    tiny_train_section,
    train_checkpoint,
    write_dataset,
)

import rsna.cli
import rsna.inference
from rsna.cli import build_parser
from rsna.evaluation import evaluate_checkpoint, predict_volume
from rsna.inference import CHECKPOINT_VARIABLE, OUTPUT_COLUMNS, find_series_dirs
from rsna.inference.series import SeriesPathError, describe_dropped
from rsna.labels import LABEL_COLUMNS
from rsna.preprocess.runner import preprocess_dataset
from rsna.preprocess.series import SeriesJob, preprocess_series
from rsna.preprocess.settings import VolumeSpec
from rsna.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)

REPOSITORY = Path(__file__).resolve().parents[1]
REAL_DICOM = Path(__file__).parents[1].parent / "shared" / "dicom" / "real"
SHAPE = (16, 32, 32)
VOLUME_SPEC = preprocess_section(SHAPE)
# Another preprocessing, with coarser voxels and another shape, for the checkpoint-wins test.
OTHER_SPEC = {
    "spacing_mm": [3.0, 2.5, 2.5],
    "shape": [12, 20, 24],
    "ct_window_hu": [0.0, 400.0],
    "mr_percentiles": [2.0, 98.0],
}
# Tolerance of the agreement with the evaluate stage (float32 forward passes in other
# batch compositions).
TOLERANCE = 1e-5
UID_PREFIX = "1.2.826.0.1.3680043.8.498.77"
# Folder name -> (SeriesInstanceUID, DICOM Modality, shape (z, y, x), spacing (z, y, x) in mm).
SERIES = {
    "a_ct": (f"{UID_PREFIX}.1", "CT", (20, 40, 40), (1.6, 1.5, 1.5)),
    "b_ct": (f"{UID_PREFIX}.2", "CT", (24, 48, 36), (1.25, 1.4, 1.6)),
    "c_mr": (f"{UID_PREFIX}.3", "MR", (18, 36, 36), (2.0, 1.8, 1.8)),
}


def _stored_values(modality: str, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Return stored values that differ between seeds by a bright block at another place."""
    z, y, x = (size // 4 + seed * size // 6 for size in shape)
    if modality == "CT":
        values = head_ct_values(shape, seed=seed)
        values[z : z + 6, y : y + 8, x : x + 8] = 1024 + 500
        return values
    rng = np.random.default_rng(seed)
    values = rng.gamma(2.0, 100.0, size=shape)
    values[z : z + 6, y : y + 8, x : x + 8] += 800.0
    return np.round(values).astype(np.uint16)


def _write_dicom_series(root: Path) -> dict[str, Path]:
    folders = {}
    for seed, (name, (uid, modality, shape, spacing)) in enumerate(SERIES.items()):
        rescale = {} if modality == "CT" else {"rescale_slope": None, "rescale_intercept": None}
        write_series(
            root / name,
            stored=_stored_values(modality, shape, seed),
            spacing_mm=spacing,
            modality=modality,
            series_uid=uid,
            **rescale,
        )
        folders[name] = root / name
    return folders


def _train_checkpoint(root: Path) -> Path:
    data = write_dataset(root / "training", counts={"train": 12, "val": 6}, shape=SHAPE)
    return train_checkpoint(
        root,
        data,
        train_section=tiny_train_section(epochs=3, lr=0.01),
        volume_spec=VOLUME_SPEC,
    )


def _evaluate_series(root: Path, checkpoint: Path, folders: dict[str, Path]) -> dict[bool, dict]:
    """Preprocess the series as the preprocess stage does and score them as evaluate does."""
    volumes, index = root / "volumes", root / "volumes_index.jsonl"
    preprocess_dataset(
        [SeriesJob(series_dir=folder) for folder in folders.values()],
        out_dir=volumes,
        index_path=index,
        rejects_path=root / "rejects.jsonl",
        spec=VolumeSpec(**{key: tuple(value) for key, value in VOLUME_SPEC.items()}),
        workers=1,
        threads_per_worker=1,
    )
    splits, manifest = root / "splits.csv", root / "manifest.jsonl"
    uids = [uid for uid, *_ in SERIES.values()]
    with open(splits, "w", newline="", encoding="utf-8") as handle:
        handle.write("SeriesInstanceUID,PatientID,split,fold\n")
        handle.writelines(f"{uid},P{number},test,-1\n" for number, uid in enumerate(uids))
    labels = [[number % 2] * len(LABEL_COLUMNS) for number in range(len(uids))]
    manifest.write_text(
        "".join(
            json.dumps({"SeriesInstanceUID": uid, "Modality": "CTA", "labels": row}) + "\n"
            for uid, row in zip(uids, labels, strict=True)
        ),
        encoding="utf-8",
    )

    predictions = {}
    for tta_flip in (False, True):
        out = root / f"evaluate-tta-{tta_flip}"
        evaluate_checkpoint(
            checkpoint_path=checkpoint,
            volume_spec=VOLUME_SPEC,
            volumes_dir=volumes,
            index_path=index,
            splits_path=splits,
            manifest_path=manifest,
            metrics_path=out / "evaluate.json",
            roc_path=out / "roc.csv",
            predictions_path=out / "predictions.csv",
            tta_flip=tta_flip,
            device="cpu",
        )
        predictions[tta_flip] = {
            row["SeriesInstanceUID"]: np.array([float(row[name]) for name in LABEL_COLUMNS])
            for row in _read_csv(out / "predictions.csv")
        }
    return predictions


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained checkpoint, three DICOM series and the evaluate stage's predictions of them."""
    root = tmp_path_factory.mktemp("inference")
    checkpoint = _train_checkpoint(root)
    folders = _write_dicom_series(root / "series")
    evaluated = _evaluate_series(root, checkpoint, folders)
    return {"root": root, "checkpoint": checkpoint, "folders": folders, "evaluated": evaluated}


@pytest.fixture(autouse=True)
def _no_process_model():
    rsna.inference.unload_model()
    yield
    rsna.inference.unload_model()


@pytest.fixture(autouse=True)
def _outside_repository(tmp_path, monkeypatch):
    """Run in an empty folder, so that predict finds no ./params.yaml unless a test writes one."""
    monkeypatch.chdir(tmp_path)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _run_predict(argv: list[str]) -> int:
    """Run ``rsna predict`` in this process, leaving logging to pytest's capture."""
    args = build_parser().parse_args(["predict", *argv])
    return args.run(args)


def _predict_on_cpu(checkpoint: Path, out: Path, paths: list[Path], *flags: str) -> int:
    """Run ``rsna predict --device cpu`` on ``paths`` with extra ``flags``."""
    common = ["--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu"]
    return _run_predict([*common, *flags, *map(str, paths)])


def _probabilities(row: pd.Series) -> np.ndarray:
    return row[list(LABEL_COLUMNS)].to_numpy(dtype=np.float64)


def _prevalence(checkpoint: Path) -> np.ndarray:
    return np.asarray(load_checkpoint(checkpoint)["train_prevalence"], dtype=np.float32)


@pytest.mark.parametrize("tta_flip", [False, True])
def test_cli_matches_evaluate_stage(world, tmp_path, tta_flip):
    out = tmp_path / "predictions.csv"
    flags = ["--tta-flip"] if tta_flip else ["--no-tta-flip"]

    status = _predict_on_cpu(world["checkpoint"], out, [world["root"] / "series"], *flags)

    assert status == 0
    frame = pd.read_csv(out)
    assert list(frame["SeriesInstanceUID"]) == [uid for uid, *_ in SERIES.values()]
    assert list(frame["status"]) == ["ok"] * len(SERIES)
    for _, row in frame.iterrows():
        expected = world["evaluated"][tta_flip][row["SeriesInstanceUID"]]
        np.testing.assert_allclose(_probabilities(row), expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(
    ("evaluate", "expected_flip"),
    [
        (None, True),
        ({"tta_flip": False, "precision": "float32"}, False),
        ({"tta_flip": True}, True),
    ],
    ids=["no-params-file", "params-flip-off", "params-flip-on"],
)
def test_cli_default_follows_params_file(world, tmp_path, caplog, evaluate, expected_flip):
    if evaluate is not None:
        params = {"evaluate": evaluate}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    out = tmp_path / "predictions.csv"

    with caplog.at_level(logging.INFO):
        status = _predict_on_cpu(world["checkpoint"], out, [world["folders"]["a_ct"]])

    assert status == 0
    assert f"Flip averaging {'on' if expected_flip else 'off'}, precision float32" in caplog.text
    row = pd.read_csv(out).iloc[0]
    expected = world["evaluated"][expected_flip][SERIES["a_ct"][0]]
    np.testing.assert_allclose(_probabilities(row), expected, rtol=0, atol=TOLERANCE)
    other = world["evaluated"][not expected_flip][SERIES["a_ct"][0]]
    assert np.abs(_probabilities(row) - other).max() > 10 * TOLERANCE


def test_flag_overrides_params_file(world, tmp_path):
    params = tmp_path / "mine.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"tta_flip": True}}), encoding="utf-8")
    out = tmp_path / "predictions.csv"

    flags = ("--params", str(params), "--no-tta-flip")
    status = _predict_on_cpu(world["checkpoint"], out, [world["folders"]["b_ct"]], *flags)

    assert status == 0
    row = pd.read_csv(out).iloc[0]
    expected = world["evaluated"][False][SERIES["b_ct"][0]]
    np.testing.assert_allclose(_probabilities(row), expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("tta_flip", [None, False])
def test_predict_function_matches_evaluate_stage(world, tta_flip):
    options = {} if tta_flip is None else {"tta_flip": tta_flip}
    rsna.inference.load_model(world["checkpoint"], device="cpu", **options)
    expected_flip = tta_flip is None

    for name, (uid, *_) in SERIES.items():
        frame = rsna.inference.predict(str(world["folders"][name]))

        assert list(frame.columns) == list(LABEL_COLUMNS)
        assert frame.shape == (1, len(LABEL_COLUMNS))
        np.testing.assert_allclose(
            frame.iloc[0].to_numpy(dtype=np.float64),
            world["evaluated"][expected_flip][uid],
            rtol=0,
            atol=TOLERANCE,
        )


def test_predict_loads_environment_checkpoint_once(world, monkeypatch, caplog):
    monkeypatch.setenv(CHECKPOINT_VARIABLE, str(world["checkpoint"]))
    folder = str(world["folders"]["a_ct"])

    with caplog.at_level(logging.INFO, logger="rsna"):
        first = rsna.inference.predict(folder)
        second = rsna.inference.predict(folder)

    loads = [
        message for message in caplog.messages if "Inference uses the preprocessing" in message
    ]
    assert len(loads) == 1
    assert rsna.inference.current_model() is rsna.inference.current_model()
    pd.testing.assert_frame_equal(first, second)
    np.testing.assert_allclose(
        first.iloc[0].to_numpy(dtype=np.float64),
        world["evaluated"][True][SERIES["a_ct"][0]],
        rtol=0,
        atol=TOLERANCE,
    )


def test_predict_without_model_raises(monkeypatch):
    monkeypatch.delenv(CHECKPOINT_VARIABLE, raising=False)

    with pytest.raises(CheckpointError, match=f"environment variable {CHECKPOINT_VARIABLE}"):
        rsna.inference.predict("anything")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".pq"])
def test_output_columns_and_formats(world, tmp_path, suffix):
    out = tmp_path / f"predictions{suffix}"

    folders = world["folders"]
    status = _predict_on_cpu(world["checkpoint"], out, [folders["b_ct"], folders["a_ct"]])

    assert status == 0
    frame = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert list(frame.columns) == list(OUTPUT_COLUMNS)
    assert list(OUTPUT_COLUMNS) == ["SeriesInstanceUID", *LABEL_COLUMNS, "status"]
    assert list(frame["SeriesInstanceUID"]) == [SERIES["b_ct"][0], SERIES["a_ct"][0]]
    probabilities = frame[list(LABEL_COLUMNS)].to_numpy()
    assert probabilities.dtype == np.float64
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert not list(tmp_path.glob(".tmp-*"))
    for _, row in frame.iterrows():
        expected = world["evaluated"][True][row["SeriesInstanceUID"]]
        np.testing.assert_allclose(_probabilities(row), expected, rtol=0, atol=TOLERANCE)


def test_unreadable_series_get_fallback_rows(world, tmp_path, caplog):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "broken.dcm").write_bytes(b"this is not a DICOM file")
    other_uid = f"{UID_PREFIX}.99"
    write_series(
        tmp_path / "secondary",
        stored=head_ct_values((3, 8, 8)),
        modality="OT",
        series_uid=other_uid,
    )
    out = tmp_path / "predictions.csv"

    with caplog.at_level(logging.WARNING):
        status = _predict_on_cpu(
            world["checkpoint"], out, [garbage, world["folders"]["a_ct"], tmp_path / "secondary"]
        )

    assert status == 0
    frame = pd.read_csv(out)
    assert list(frame["SeriesInstanceUID"]) == ["garbage", SERIES["a_ct"][0], other_uid]
    assert list(frame["status"] == "ok") == [False, True, False]
    prevalence = _prevalence(world["checkpoint"])
    for index in (0, 2):
        np.testing.assert_allclose(_probabilities(frame.iloc[index]), prevalence, rtol=0, atol=1e-7)
    assert frame["status"][0].startswith("series garbage: no CT or MR image")
    assert frame["status"][0].endswith(
        "Exclude this series. Dropped: broken.dcm: not a readable DICOM file "
        "(no DICOM preamble and no SOPClassUID or Rows)"
    )
    assert frame["status"][2].startswith("series secondary: no CT or MR image")
    assert frame["status"][2].count(".dcm: Modality OT is neither CT nor MR") == 3
    warnings = [record.message for record in caplog.records if record.levelno == logging.WARNING]
    assert any(str(garbage) in message for message in warnings)
    assert any(str(tmp_path / "secondary") in message for message in warnings)


def test_describe_dropped_caps_entries():
    dropped = [{"what": f"{number}.dcm", "reason": "localizer"} for number in range(7)]

    text = describe_dropped(dropped, limit=2)

    assert text == "0.dcm: localizer; 1.dcm: localizer; 5 more (rsna inspect SERIES_DIR lists all)"


def test_predict_function_falls_back_for_unreadable_series(world, tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    rsna.inference.load_model(world["checkpoint"], device="cpu")

    with caplog.at_level(logging.WARNING):
        frame = rsna.inference.predict(str(empty))

    assert list(frame.columns) == list(LABEL_COLUMNS)
    probabilities = frame.iloc[0].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(probabilities, _prevalence(world["checkpoint"]), rtol=0, atol=1e-7)
    assert any(
        str(empty) in record.message and record.levelno == logging.WARNING
        for record in caplog.records
    )


def test_checkpoint_preprocessing_wins_over_params_file(world, tmp_path, monkeypatch, caplog):
    payload = load_checkpoint(world["checkpoint"])
    payload["params"] = {**payload["params"], "preprocess": OTHER_SPEC}
    checkpoint = tmp_path / "other.pt"
    save_checkpoint(checkpoint, payload)
    params = {"preprocess": {**VOLUME_SPEC, "workers": 0, "threads_per_worker": 1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    folder = world["folders"]["b_ct"]
    out = tmp_path / "predictions.csv"

    with caplog.at_level(logging.INFO):
        status = _run_predict(["--checkpoint", str(checkpoint), "--out", str(out), str(folder)])

    assert status == 0
    model, _ = model_from_checkpoint(checkpoint)
    other = VolumeSpec(**{key: tuple(value) for key, value in OTHER_SPEC.items()})
    volume, _ = preprocess_series(SeriesJob(series_dir=folder), spec=other)
    assert volume.shape == tuple(OTHER_SPEC["shape"])
    expected = predict_volume(model, volume, input_shape=None, tta_flip=True)
    row = pd.read_csv(out).iloc[0]
    np.testing.assert_allclose(_probabilities(row), expected, rtol=0, atol=TOLERANCE)
    own_params = world["evaluated"][True][SERIES["b_ct"][0]]
    assert np.abs(_probabilities(row) - own_params).max() > 10 * TOLERANCE
    assert "differ from params.yaml" in caplog.text
    assert "preprocess.shape: [12, 20, 24] -> [16, 32, 32]" in caplog.text
    assert "preprocess.spacing_mm: [3.0, 2.5, 2.5] -> [2.0, 2.0, 2.0]" in caplog.text


def test_batches_and_workers_give_same_predictions(world, tmp_path):
    series_root = [world["root"] / "series"]
    single, batched = tmp_path / "single.csv", tmp_path / "batched.csv"

    assert _predict_on_cpu(world["checkpoint"], single, series_root) == 0
    flags = ("--batch-size", "2", "--workers", "1")
    assert _predict_on_cpu(world["checkpoint"], batched, series_root, *flags) == 0

    first, second = pd.read_csv(single), pd.read_csv(batched)
    assert list(first["SeriesInstanceUID"]) == list(second["SeriesInstanceUID"])
    np.testing.assert_allclose(
        first[list(LABEL_COLUMNS)].to_numpy(),
        second[list(LABEL_COLUMNS)].to_numpy(),
        rtol=0,
        atol=TOLERANCE,
    )


def test_find_series_dirs_rules(world, tmp_path):
    series_root = world["root"] / "series"
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "z_second").mkdir()
    (tmp_path / "a_first").mkdir()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a series", encoding="utf-8")

    assert find_series_dirs([world["folders"]["a_ct"]]) == [world["folders"]["a_ct"]]
    assert find_series_dirs([series_root]) == [series_root / name for name in sorted(SERIES)]
    assert find_series_dirs([tmp_path]) == [tmp_path / "a_first", tmp_path / "z_second"]
    assert find_series_dirs([tmp_path / "a_first"]) == [tmp_path / "a_first"]
    assert find_series_dirs([series_root, world["folders"]["b_ct"]]) == [
        series_root / name for name in sorted(SERIES)
    ]
    with pytest.raises(SeriesPathError, match=r"notes\.txt is not a folder"):
        find_series_dirs([a_file])


def test_dicom_files_without_extension_make_a_series(tmp_path):
    files = write_series(tmp_path / "plain", stored=head_ct_values((3, 8, 8)))
    for path in files.paths:
        path.rename(path.with_suffix(""))

    assert find_series_dirs([tmp_path / "plain"]) == [tmp_path / "plain"]


@pytest.mark.parametrize(
    ("arguments", "expected_status", "message"),
    [
        (["--out", "{tmp}/out.txt", "{series}"], 2, "extension '.txt'"),
        (["--out", "{tmp}/out.csv", "{tmp}/missing"], 2, "missing is not a folder"),
        (["--out", "{tmp}/out.csv", "--device", "tpu", "{series}"], 2, "invalid --device"),
        (
            ["--out", "{tmp}/out.csv", "--params", "{tmp}/no.yaml", "{series}"],
            2,
            "no.yaml not found",
        ),
        (
            ["--out", "{tmp}/out.csv", "--params", "{tmp}/bad.yaml", "{series}"],
            2,
            "params section 'evaluate' has unknown keys ['flip']",
        ),
    ],
)
def test_usage_errors(world, tmp_path, caplog, arguments, expected_status, message):
    (tmp_path / "bad.yaml").write_text("evaluate:\n  flip: true\n", encoding="utf-8")
    values = {"tmp": tmp_path, "series": world["root"] / "series"}
    argv = ["--checkpoint", str(world["checkpoint"])] + [
        argument.format(**values) for argument in arguments
    ]

    assert _run_predict(argv) == expected_status
    assert message in caplog.text
    assert not (tmp_path / "out.csv").exists()


def test_checkpoint_without_prevalence_is_unusable(world, tmp_path, caplog):
    payload = load_checkpoint(world["checkpoint"])
    del payload["train_prevalence"]
    checkpoint = tmp_path / "old.pt"
    save_checkpoint(checkpoint, payload)
    out = tmp_path / "out.csv"

    status = _run_predict(
        ["--checkpoint", str(checkpoint), "--out", str(out), str(world["folders"]["a_ct"])]
    )

    assert status == 1
    assert "lacks train_prevalence" in caplog.text
    assert not out.exists()


def test_missing_checkpoint_is_unusable(world, tmp_path, caplog):
    out = tmp_path / "out.csv"
    status = _predict_on_cpu(tmp_path / "none.pt", out, [world["folders"]["a_ct"]])

    assert status == 1
    assert "none.pt not found" in caplog.text


def test_command_line_entry_point(world, tmp_path):
    out = tmp_path / "predictions.parquet"
    command = [sys.executable, "-m", "rsna.cli", "predict", "--out", str(out), "--device", "cpu"]
    command += ["--checkpoint", str(world["checkpoint"]), str(world["folders"]["c_mr"])]

    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "RSNA_NO_PROGRESS": "1"},
    )

    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(out)
    assert list(frame["SeriesInstanceUID"]) == [SERIES["c_mr"][0]]
    np.testing.assert_allclose(
        _probabilities(frame.iloc[0]),
        world["evaluated"][True][SERIES["c_mr"][0]],
        rtol=0,
        atol=TOLERANCE,
    )


def test_real_series_scored_or_given_fallback(world, tmp_path):
    if not REAL_DICOM.is_dir():
        pytest.skip(f"real DICOM series not found at {REAL_DICOM}")
    names = (
        "mr_sag_rle_lossless",
        "ct_same_position_bolus_monitoring",
        "tiny_cr_monochrome1_rescale",
    )
    out = tmp_path / "real.csv"

    status = _predict_on_cpu(world["checkpoint"], out, [REAL_DICOM / name for name in names])

    assert status == 0
    frame = pd.read_csv(out)
    assert list(frame["status"] == "ok") == [True, False, False]
    prevalence = _prevalence(world["checkpoint"])
    for index in (1, 2):
        np.testing.assert_allclose(_probabilities(frame.iloc[index]), prevalence, rtol=0, atol=1e-7)
    assert frame["SeriesInstanceUID"].str.match(r"^[0-9.]+$").all()


def test_text_file_is_unusable_checkpoint(tmp_path):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_text("hello world", encoding="utf-8")

    with pytest.raises(CheckpointError, match="not a checkpoint written by this package"):
        load_checkpoint(checkpoint)


def test_predict_output_under_file_is_usage_error(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("", encoding="utf-8")

    status = rsna.cli.main(
        ["predict", "--checkpoint", str(tmp_path / "x.pt"), "--out", str(blocker / "p.csv"), "."]
    )

    assert status == 2
