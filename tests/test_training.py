import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from training_fixtures import (
    stage_arguments,
    tiny_train_section,
    uid_of,
    write_dataset,
    write_params,
)

from rsna.config import ParamsError
from rsna.model import build_model
from rsna.training import TrainPaths, launch_training
from rsna.training.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    CheckpointError,
    IncompatibleCheckpointError,
    check_compatible,
    differing_params,
    load_checkpoint,
    model_from_checkpoint,
)
from rsna.training.distributed import torchrun_command
from rsna.training.optimization import compute_pos_weight, lr_factor
from rsna.training.settings import train_settings_from_section
from rsna.training.trainer import run_training

REPOSITORY = Path(__file__).resolve().parents[1]
TRAIN_STAGE = REPOSITORY / "stages" / "train.py"
VOLUME_SPEC = {
    "spacing_mm": [2.0, 2.0, 2.0],
    "shape": [16, 32, 32],
    "ct_window_hu": [-100.0, 600.0],
    "mr_percentiles": [1.0, 99.0],
}


@pytest.fixture
def torch_state():
    """Restore the global torch settings that run_training changes in this process."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


def _paths(data: dict, out: Path) -> TrainPaths:
    return TrainPaths(
        volumes_dir=data["volumes"],
        index=data["index"],
        splits=data["splits"],
        manifest=data["manifest"],
        models_dir=out / "models",
        metrics=out / "metrics" / "train.json",
        history=out / "plots" / "history.csv",
        activations=out / "plots" / "activations.csv",
    )


def _stage_command(params: Path, data: dict, out: Path) -> list[str]:
    return [sys.executable, str(TRAIN_STAGE), "--params", str(params), *stage_arguments(data, out)]


def _stage_environment() -> dict:
    return {**os.environ, "RSNA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def test_pos_weight_exact_and_clamped():
    labels = np.zeros((6, 14), dtype=np.int64)
    labels[:3, 0] = 1  # 3 negatives / 3 positives = 1
    labels[:1, 1] = 1  # 5 / 1 = 5
    labels[:2, 2] = 1  # 4 / 2 = 2
    labels[:, 3] = 1  # 0 / 6 = 0, clamped up to 1.5
    # Labels 4 to 13 have no positive: the upper bound 4.

    weight = compute_pos_weight(labels, clamp_range=(1.5, 4.0))

    assert weight.dtype == torch.float32
    assert weight.tolist() == [1.5, 4.0, 2.0, 1.5] + [4.0] * 10


def test_lr_factor_warmup_then_cosine():
    factors = [
        lr_factor(step, total_steps=10, warmup_steps=2, min_factor=0.1) for step in range(11)
    ]

    assert factors[0] == 0.5
    assert factors[1] == 1.0
    assert factors[2] == 1.0
    assert factors[6] == pytest.approx(0.1 + 0.9 * 0.5)
    assert factors[10] == pytest.approx(0.1)


def test_settings_reject_unknown_key_and_choice():
    with pytest.raises(ParamsError, match=r"unknown keys \['learning_rate'\]"):
        train_settings_from_section(tiny_train_section(learning_rate=0.1))
    with pytest.raises(
        ParamsError,
        match=r"precision 'half' is invalid; valid choices: \['auto', 'float32', 'bfloat16', "
        r"'float16'\]",
    ):
        train_settings_from_section(tiny_train_section(precision="half"))
    with pytest.raises(
        ParamsError, match=r"model.norm 'instance' is invalid; valid choices: \['batch', 'group'\]"
    ):
        train_settings_from_section(tiny_train_section(model={"norm": "instance"}))
    with pytest.raises(ParamsError, match=r"unknown keys \['depth'\]"):
        train_settings_from_section(tiny_train_section(model={"depth": 3}))
    with pytest.raises(ParamsError, match=r"together with model\.location_head: true"):
        train_settings_from_section(tiny_train_section(localizer_loss_weight=0.5))


def test_differing_params_names_keys():
    saved = {"train": {"lr": 0.1, "epochs": 3}, "model": {"width": 8}}
    current = {"train": {"lr": 0.2, "epochs": 3}, "model": {"width": 8, "norm": "group"}}

    assert differing_params(saved, current) == [
        "model.norm: '(absent)' -> 'group'",
        "train.lr: 0.1 -> 0.2",
    ]


def test_load_rejects_foreign_file(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2)}, path)

    with pytest.raises(CheckpointError, match=r"lacks fields \['format', 'kind'"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_train_writes_outputs_and_checkpoints(dataset, tmp_path, torch_state):
    settings = train_settings_from_section(tiny_train_section(activation_stats_every=2))

    metrics = run_training(
        settings=settings, volume_spec=VOLUME_SPEC, paths=_paths(dataset, tmp_path)
    )

    history = (tmp_path / "plots" / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,val_loss,val_score,lr"
    assert len(history) == 3
    assert json.loads((tmp_path / "metrics" / "train.json").read_text()) == metrics
    assert metrics["epochs"] == 2
    assert metrics["train_series"] == 24
    assert metrics["val_series"] == 12
    last = load_checkpoint(tmp_path / "models" / LAST_NAME)
    best = load_checkpoint(tmp_path / "models" / BEST_NAME)
    assert last["finished"] is True
    assert last["epoch"] == 2
    assert best["optimizer"] is None
    assert best["epoch"] == metrics["best_epoch"]
    assert best["params"]["preprocess"] == VOLUME_SPEC
    assert best["params"]["model"]["width"] == 4
    assert len(best["train_prevalence"]) == 14


def test_activation_statistics_recorded(dataset, tmp_path, torch_state):
    settings = train_settings_from_section(tiny_train_section(epochs=1, activation_stats_every=2))

    run_training(settings=settings, volume_spec=VOLUME_SPEC, paths=_paths(dataset, tmp_path))

    rows = (tmp_path / "plots" / "activations.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,stage,mean,std,zero_fraction"
    # 6 optimizer steps, recorded at steps 0, 2 and 4, for the stem and four stages.
    stages = [row.split(",")[2] for row in rows[1:]]
    assert stages == ["stem", "layer1", "layer2", "layer3", "layer4"] * 3
    assert [int(row.split(",")[0]) for row in rows[1::5]] == [0, 2, 4]
    zero_fractions = [float(row.split(",")[5]) for row in rows[1:]]
    assert all(0.0 <= value <= 1.0 for value in zero_fractions)


def test_wandb_offline_run_writes_files(dataset, tmp_path, monkeypatch, torch_state):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    section = tiny_train_section(
        epochs=1,
        wandb=True,
        wandb_mode="online",
        wandb_dir=str(tmp_path / "wandb"),
        activation_stats_every=3,
        activation_histograms=True,
    )

    run_training(
        settings=train_settings_from_section(section),
        volume_spec=VOLUME_SPEC,
        paths=_paths(dataset, tmp_path / "out"),
    )

    runs = list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))
    last = load_checkpoint(tmp_path / "out" / "models" / LAST_NAME)
    assert runs[0].name.endswith(last["wandb_run_id"])


def test_changed_params_start_over(dataset, tmp_path, torch_state, caplog):
    paths = _paths(dataset, tmp_path)
    run_training(
        settings=train_settings_from_section(tiny_train_section(epochs=1)),
        volume_spec=VOLUME_SPEC,
        paths=paths,
    )
    last = load_checkpoint(paths.models_dir / LAST_NAME)
    last["finished"] = False
    torch.save(last, paths.models_dir / LAST_NAME)
    changed = train_settings_from_section(tiny_train_section(epochs=1, lr=0.002))

    with pytest.raises(IncompatibleCheckpointError, match=r"train.lr: 0.003 -> 0.002"):
        run_training(
            settings=train_settings_from_section(
                tiny_train_section(epochs=1, lr=0.002, resume="require")
            ),
            volume_spec=VOLUME_SPEC,
            paths=paths,
        )
    run_training(settings=changed, volume_spec=VOLUME_SPEC, paths=paths)

    assert "Not resuming from" in caplog.text
    assert "train.lr: 0.003 -> 0.002" in caplog.text
    assert load_checkpoint(paths.models_dir / LAST_NAME)["params"]["train"]["lr"] == 0.002


def test_evaluation_checkpoint_rejects_other_preprocessing(dataset, tmp_path, torch_state):
    paths = _paths(dataset, tmp_path)
    run_training(
        settings=train_settings_from_section(tiny_train_section(epochs=1)),
        volume_spec=VOLUME_SPEC,
        paths=paths,
    )
    model, checkpoint = model_from_checkpoint(paths.models_dir / BEST_NAME)

    with pytest.raises(
        IncompatibleCheckpointError, match=r"preprocess.shape: \[16, 32, 32\] -> \[32, 64, 64\]"
    ):
        check_compatible(
            checkpoint,
            params={"preprocess": {**VOLUME_SPEC, "shape": [32, 64, 64]}},
            path="best.pt",
        )
    assert not model.training


def test_killed_run_resumes_to_identical_weights(dataset, tmp_path):
    section = tiny_train_section(
        epochs=3,
        accumulation_steps=2,
        checkpoint_every_steps=1,
        localizer_loss_weight=1.0,
        model={"location_head": True, "position_encoding": True},
    )
    params = write_params(tmp_path / "params.yaml", train=section)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    environment = _stage_environment()
    # Both runs use one thread each, so they can share the two cores.
    reference_run = subprocess.Popen(
        _stage_command(params, dataset, reference),
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = subprocess.Popen(
        _stage_command(params, dataset, interrupted), env=environment, stderr=subprocess.DEVNULL
    )

    last = interrupted / "models" / LAST_NAME
    deadline = time.monotonic() + 120
    while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed = load_checkpoint(last)
    assert killed["finished"] is False
    assert killed["epoch"] < 3

    resumed = subprocess.run(
        _stage_command(params, dataset, interrupted),
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
        timeout=180,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr
    _, reference_log = reference_run.communicate(timeout=180)
    assert reference_run.returncode == 0, reference_log[-3000:]

    expected, actual = load_checkpoint(reference / "models" / LAST_NAME), load_checkpoint(last)
    assert actual["epoch"] == expected["epoch"] == 3
    for name, tensor in expected["model"].items():
        assert torch.equal(actual["model"][name], tensor), name
    for key, state in expected["optimizer"]["state"].items():
        assert torch.equal(actual["optimizer"]["state"][key]["exp_avg"], state["exp_avg"])
    for name in (
        "models/last.pt",
        "models/best.pt",
        "plots/history.csv",
        "metrics/train.json",
        "plots/activations.csv",
    ):
        assert (interrupted / name).read_bytes() == (reference / name).read_bytes(), name


def test_two_process_gloo_run_writes_one_checkpoint(dataset, tmp_path):
    section = tiny_train_section(
        epochs=1,
        processes=2,
        launcher="spawn",
        backend="gloo",
        threads=1,
        localizer_loss_weight=1.0,
        model={"location_head": True, "position_encoding": True},
    )
    settings = train_settings_from_section(section)

    status = launch_training(
        settings=settings,
        volume_spec=VOLUME_SPEC,
        paths=_paths(dataset, tmp_path),
        fold=None,
        script=TRAIN_STAGE,
        argv=[],
    )

    assert status == 0
    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == [BEST_NAME, LAST_NAME]
    last = load_checkpoint(tmp_path / "models" / LAST_NAME)
    assert last["finished"] is True
    # 24 series over 2 ranks in batches of 4: 3 optimizer steps.
    assert last["global_step"] == 3
    metrics = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert metrics["val_series"] == 12
    assert metrics["best_val_score"] is not None


def test_torchrun_command_runs_stage_per_process():
    command = torchrun_command(script="stages/train.py", argv=["--params", "p.yaml"], processes=4)

    assert command[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
        "stages/train.py",
        "--params",
        "p.yaml",
    ]


def test_localizer_loss_trains_location_head(dataset, tmp_path, torch_state):
    section = tiny_train_section(
        epochs=1,
        localizer_loss_weight=1.0,
        model={"location_head": True, "position_encoding": True},
    )
    settings = train_settings_from_section(section)
    paths = _paths(dataset, tmp_path)
    # The trainer seeds the generator with train.seed before it builds the model.
    torch.manual_seed(settings.seed)
    initial = build_model(**dataclasses.asdict(settings.model)).location_head.weight.detach()

    run_training(settings=settings, volume_spec=VOLUME_SPEC, paths=paths)

    model, checkpoint = model_from_checkpoint(paths.models_dir / LAST_NAME)
    assert checkpoint["params"]["model"]["location_head"] is True
    assert model.location_head.weight.shape == (13, 4, 1, 1, 1)
    assert not torch.equal(model.location_head.weight, initial)


def _load_train_stage():
    spec = importlib.util.spec_from_file_location("train_stage", TRAIN_STAGE)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    return stage


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown-key", "params section 'train' has unknown keys ['learning_rate']"),
        ("no-params", "params file {tmp}/absent.yaml not found; pass --params FILE"),
        ("no-val-volumes", "no usable val volume: 2 of 2 series have a missing or unusable"),
        ("resume-require", "resume: require, but {tmp}/models/last.pt not found"),
    ],
)
def test_train_stage_error_one_line(tmp_path, capsys, torch_state, case, message):
    data = write_dataset(tmp_path / "data", counts={"train": 4, "val": 2})
    section = tiny_train_section()
    if case == "unknown-key":
        section = tiny_train_section(learning_rate=0.1)
    elif case == "resume-require":
        section = tiny_train_section(resume="require")
    params = write_params(tmp_path / "params.yaml", train=section)
    if case == "no-params":
        params = tmp_path / "absent.yaml"
    elif case == "no-val-volumes":
        for number in (4, 5):
            (data["volumes"] / f"{uid_of(number)}.npy").unlink()

    status = _load_train_stage().main(["--params", str(params), *stage_arguments(data, tmp_path)])

    assert status == 1
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1
    assert message.format(tmp=tmp_path) in errors[0]
    assert "Traceback" not in stderr
    assert not (tmp_path / "models" / BEST_NAME).exists()
