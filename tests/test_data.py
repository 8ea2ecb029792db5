import json
import logging

import numpy as np
import pytest
import torch
from training_fixtures import location_centre, uid_of, write_dataset

from rsna.data import (
    PREPROCESS_REJECTS,
    AugmentSettings,
    EpochSampler,
    SplitAssignment,
    SplitsFileError,
    TooManyBadVolumesError,
    VolumeDataset,
    VolumeRecord,
    count_preprocess_rejected,
    extract_window,
    flip_left_right,
    load_split_records,
    localizer_points,
    positive_sampling_weights,
    screen_volumes,
    select_series,
    window_start,
)
from rsna.labels import ANEURYSM_PRESENT, LABEL_COLUMNS

LEFT_MCA = LABEL_COLUMNS.index("Left Middle Cerebral Artery")
RIGHT_MCA = LABEL_COLUMNS.index("Right Middle Cerebral Artery")
ACOM = LABEL_COLUMNS.index("Anterior Communicating Artery")
AP = LABEL_COLUMNS.index(ANEURYSM_PRESENT)


def test_flip_swaps_every_left_right_label():
    labels = np.arange(14, dtype=np.float32)
    image = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)

    flipped_image, flipped = flip_left_right(image, labels)

    for index, name in enumerate(LABEL_COLUMNS):
        if name.startswith("Left "):
            partner = LABEL_COLUMNS.index("Right " + name.removeprefix("Left "))
        elif name.startswith("Right "):
            partner = LABEL_COLUMNS.index("Left " + name.removeprefix("Right "))
        else:
            partner = index
        assert flipped[index] == labels[partner], name
    assert np.array_equal(flipped_image, image[..., ::-1])
    twice_image, twice = flip_left_right(flipped_image, flipped)
    assert np.array_equal(twice, labels)
    assert np.array_equal(twice_image, image)


def test_augmented_flip_moves_blob_and_label(tmp_path):
    shape = (16, 32, 32)
    volume = np.zeros(shape, dtype=np.float16)
    z, y, x = location_centre("Left Middle Cerebral Artery", shape)
    volume[z, y, x] = 1.0
    path = tmp_path / "volume.npy"
    np.save(path, volume)
    labels = [0] * 14
    labels[LEFT_MCA] = labels[AP] = 1
    record = VolumeRecord(
        SeriesInstanceUID="1.2.3", path=path, labels=tuple(labels), modality="CTA"
    )
    dataset = VolumeDataset(
        [record], input_shape=None, augment=AugmentSettings(flip_probability=1.0)
    )

    sample = dataset[(0, 123)]

    image = sample["image"][0].numpy()
    assert sample["flipped"] is True
    assert image[z, y, shape[2] - 1 - x] == 1.0
    assert image.sum() == 1.0
    assert sample["labels"][RIGHT_MCA] == 1
    assert sample["labels"][LEFT_MCA] == 0
    assert sample["labels"][AP] == 1


@pytest.mark.parametrize(
    ("size", "target", "expected"),
    [(10, 6, 2), (6, 10, -2), (7, 7, 0), (7, 4, 1)],
)
def test_window_start_centres(size, target, expected):
    assert window_start(size, target, rng=None, max_shift=0) == expected


def test_window_start_random_range():
    rng = np.random.default_rng(0)

    starts = {window_start(10, 6, rng=rng, max_shift=3) for _ in range(400)}

    assert starts == set(range(-1, 6))


def test_extract_window_crops_and_pads():
    volume = np.arange(4 * 4 * 4, dtype=np.float16).reshape(4, 4, 4)

    window = extract_window(volume, starts=(-1, 1, 2), shape=(3, 2, 3))

    assert window.dtype == np.float32
    assert np.array_equal(window[0], np.zeros((2, 3)))
    assert np.array_equal(window[1:, :, :2], volume[:2, 1:3, 2:4])
    assert np.array_equal(window[:, :, 2], np.zeros((3, 2)))


def test_extract_window_outside_is_zero():
    window = extract_window(np.ones((4, 4, 4)), starts=(10, 0, 0), shape=(2, 2, 2))

    assert not window.any()


def test_dataset_sample_fields(tmp_path):
    paths = write_dataset(tmp_path, counts={"train": 4})
    records = load_split_records(
        split="train",
        volumes_dir=paths["volumes"],
        index_path=paths["index"],
        splits_path=paths["splits"],
        manifest_path=paths["manifest"],
    )
    dataset = VolumeDataset(records, input_shape=(12, 32, 40), augment=None)

    sample = dataset[1]

    assert sample["image"].shape == (1, 12, 32, 40)
    assert sample["image"].dtype == torch.float32
    assert sample["labels"].shape == (14,)
    assert sample["SeriesInstanceUID"] == uid_of(1)
    assert sample["Modality"] == "CTA"
    assert sample["index"] == 1
    assert records[0].volume_sha256 == f"sha256-{uid_of(0)}"


def test_augmentation_depends_only_on_seed(tmp_path):
    paths = write_dataset(tmp_path, counts={"train": 2})
    records = load_split_records(
        split="train",
        volumes_dir=paths["volumes"],
        index_path=paths["index"],
        splits_path=paths["splits"],
        manifest_path=paths["manifest"],
    )
    augment = AugmentSettings(
        flip_probability=0.5, shift_voxels=(2, 2, 2), intensity_scale=0.2, intensity_shift=0.1
    )
    dataset = VolumeDataset(records, input_shape=None, augment=augment)

    first, again, other = dataset[(0, 7)], dataset[(0, 7)], dataset[(0, 8)]

    assert torch.equal(first["image"], again["image"])
    assert not torch.equal(first["image"], other["image"])
    assert torch.equal(dataset[0]["image"], dataset[0]["image"])


def _records(tmp_path, count=5, shape=(4, 8, 8)):
    records = []
    for number in range(count):
        path = tmp_path / f"{uid_of(number)}.npy"
        np.save(path, np.zeros(shape, dtype=np.float16))
        records.append(
            VolumeRecord(
                SeriesInstanceUID=uid_of(number), path=path, labels=(0,) * 14, modality="MRA"
            )
        )
    return records


def test_screen_skips_bad_volumes_with_warnings(tmp_path, caplog):
    records = _records(tmp_path, count=8)
    records[1].path.unlink()
    records[2].path.write_text("not a numpy file")
    np.save(records[3].path, np.zeros((4, 8, 9), dtype=np.float16))
    nan_volume = np.zeros((4, 8, 8), dtype=np.float16)
    nan_volume[1, 2, 3] = np.nan
    np.save(records[4].path, nan_volume)

    with caplog.at_level(logging.WARNING):
        usable = screen_volumes(
            records,
            split="train",
            expected_shape=(4, 8, 8),
            check_values=True,
            max_bad_fraction=0.5,
        )

    assert [r.SeriesInstanceUID for r in usable] == [uid_of(n) for n in (0, 5, 6, 7)]
    assert f"Series {uid_of(1)} skipped from train: volume file" in caplog.text
    assert (
        f"Series {uid_of(2)} skipped from train: volume file" in caplog.text
        and "not a readable .npy" in caplog.text
    )
    assert f"Series {uid_of(3)} skipped from train: volume shape (4, 8, 9) differs" in caplog.text
    assert f"Series {uid_of(4)} skipped from train: volume contains NaN" in caplog.text
    assert (
        "Split train: 4 of 8 series skipped: 0 rejected by the preprocess stage, "
        "4 with an unusable volume" in caplog.text
    )


def test_screen_fails_above_bad_fraction(tmp_path):
    records = _records(tmp_path, count=4)
    records[0].path.unlink()
    records[1].path.unlink()

    with pytest.raises(TooManyBadVolumesError) as raised:
        screen_volumes(
            records, split="val", expected_shape=(4, 8, 8), check_values=True, max_bad_fraction=0.25
        )

    message = str(raised.value)
    assert message.startswith(
        "2 of 4 val volumes listed in the volume index are missing or unusable "
        "(50.0% > max_bad_fraction 25.0%)"
    )
    assert "rerun the preprocess stage (dvc repro preprocess)" in message
    assert "or raise max_bad_fraction" in message


def _drop_from_index(paths: dict, uids: list[str]) -> None:
    """Remove series from the volume index and their files, as the preprocess stage does."""
    index = [json.loads(line) for line in paths["index"].read_text().splitlines()]
    kept = [record for record in index if record["SeriesInstanceUID"] not in uids]
    paths["index"].write_text("".join(json.dumps(record) + "\n" for record in kept))
    for uid in uids:
        (paths["volumes"] / f"{uid}.npy").unlink()


def _test_records(paths: dict) -> list[VolumeRecord]:
    return load_split_records(
        split="test",
        volumes_dir=paths["volumes"],
        index_path=paths["index"],
        splits_path=paths["splits"],
        manifest_path=paths["manifest"],
    )


def test_series_missing_from_index_marked(tmp_path):
    paths = write_dataset(tmp_path, counts={"test": 3})
    _drop_from_index(paths, [uid_of(1)])

    records = _test_records(paths)

    assert [record.indexed for record in records] == [True, False, True]
    assert records[1].volume_sha256 == ""
    assert count_preprocess_rejected(records) == 1


def test_preprocess_rejects_not_counted_as_bad(tmp_path, caplog):
    paths = write_dataset(tmp_path, counts={"test": 5})
    _drop_from_index(paths, [uid_of(2)])
    records = _test_records(paths)

    with caplog.at_level(logging.WARNING):
        usable = screen_volumes(
            records,
            split="test",
            expected_shape=(16, 32, 32),
            check_values=True,
            max_bad_fraction=0.05,
        )

    assert [record.SeriesInstanceUID for record in usable] == [uid_of(n) for n in (0, 1, 3, 4)]
    assert (
        f"Series {uid_of(2)} skipped from test: rejected by the preprocess stage (not in the "
        f"volume index); the reason is in {PREPROCESS_REJECTS}" in caplog.text
    )
    assert (
        "Split test: 1 of 5 series skipped: 1 rejected by the preprocess stage, "
        "0 with an unusable volume" in caplog.text
    )


def test_listed_but_missing_volume_still_counts(tmp_path):
    paths = write_dataset(tmp_path, counts={"test": 5})
    _drop_from_index(paths, [uid_of(0)])
    (paths["volumes"] / f"{uid_of(1)}.npy").unlink()
    records = _test_records(paths)

    with pytest.raises(
        TooManyBadVolumesError,
        match=r"^1 of 4 test volumes listed in the volume index are missing or unusable "
        r"\(25.0% > max_bad_fraction 5.0%\)",
    ):
        screen_volumes(
            records,
            split="test",
            expected_shape=(16, 32, 32),
            check_values=False,
            max_bad_fraction=0.05,
        )


@pytest.mark.parametrize(
    ("rejected", "missing", "message"),
    [
        (
            [0, 1, 2],
            [],
            r"^all 3 test series were rejected by the preprocess stage \(reasons in "
            r"reports/preprocess_rejects.jsonl\); fix or replace those series, or add series",
        ),
        (
            [0],
            [1, 2],
            r"^no usable test volume: 2 of 3 series have a missing or unusable volume and 1 "
            r"were rejected by the preprocess stage .*rerun the preprocess stage",
        ),
    ],
    ids=["all-rejected", "rejected-and-missing"],
)
def test_nothing_usable_fails_with_fix(tmp_path, rejected, missing, message):
    paths = write_dataset(tmp_path, counts={"test": 3})
    _drop_from_index(paths, [uid_of(number) for number in rejected])
    for number in missing:
        (paths["volumes"] / f"{uid_of(number)}.npy").unlink()
    records = _test_records(paths)

    with pytest.raises(TooManyBadVolumesError, match=message):
        screen_volumes(
            records,
            split="test",
            expected_shape=(16, 32, 32),
            check_values=False,
            max_bad_fraction=1.0,
        )


def test_empty_split_fails_with_fix():
    with pytest.raises(
        TooManyBadVolumesError,
        match=r"^the val split has no series in splits.csv; rerun the split stage",
    ):
        screen_volumes(
            [], split="val", expected_shape=(4, 8, 8), check_values=False, max_bad_fraction=0.05
        )


def test_select_series_folds():
    assignments = {
        "1.1": SplitAssignment("train", 0),
        "1.2": SplitAssignment("train", 1),
        "1.3": SplitAssignment("val", 0),
        "1.4": SplitAssignment("val", 1),
        "1.5": SplitAssignment("test", -1),
    }

    assert select_series(assignments, role="train", fold=None) == ["1.1", "1.2"]
    assert select_series(assignments, role="val", fold=None) == ["1.3", "1.4"]
    assert select_series(assignments, role="train", fold=0) == ["1.2", "1.4"]
    assert select_series(assignments, role="val", fold=0) == ["1.1", "1.3"]
    assert select_series(assignments, role="test", fold=0) == ["1.5"]
    with pytest.raises(
        SplitsFileError,
        match=r"fold 2 not found in splits.csv; folds present: \[0, 1\]. Choose one of them",
    ):
        select_series(assignments, role="val", fold=2)


def test_positive_sampling_weights_exact():
    labels = np.zeros((5, 14), dtype=np.int64)
    labels[[0, 3], AP] = 1

    weights = positive_sampling_weights(labels, positive_fraction=0.5)

    assert weights.tolist() == [0.25, 0.5 / 3, 0.5 / 3, 0.25, 0.5 / 3]


def test_sampler_order_depends_on_seed_and_epoch():
    dataset = list(range(10))
    sampler = EpochSampler(dataset, seed=1, shuffle=True)

    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(0)
    again = list(sampler)
    sampler.set_epoch(1)
    other = list(sampler)

    assert first == again
    assert sorted(index for index, _ in first) == list(range(10))
    assert [index for index, _ in first] != [index for index, _ in other]


def test_sampler_ranks_partition_with_padding():
    dataset = list(range(7))
    ranks = [
        EpochSampler(dataset, seed=1, shuffle=True, num_replicas=2, rank=rank) for rank in (0, 1)
    ]
    single = EpochSampler(dataset, seed=1, shuffle=True)

    keys = [list(sampler) for sampler in ranks]

    assert len(keys[0]) == len(keys[1]) == 4
    merged = [key for pair in zip(*keys, strict=True) for key in pair]
    assert merged[:7] == list(single)
    assert merged[7] == merged[0]


def test_sampler_start_skips_keys():
    sampler = EpochSampler(list(range(9)), seed=4, shuffle=True)
    full = list(sampler)

    sampler.set_start(5)

    assert list(sampler) == full[5:]
    assert len(sampler) == 4


def test_weighted_sampler_prefers_positives():
    weights = np.array([0.9] + [0.1 / 99] * 99)
    sampler = EpochSampler(list(range(100)), seed=0, shuffle=True, weights=weights)

    indices = [index for index, _ in sampler]

    assert 75 <= indices.count(0) <= 100


def test_localizers_follow_crop_and_flip(tmp_path):
    path = tmp_path / "volume.npy"
    np.save(path, np.zeros((16, 32, 32), dtype=np.float16))
    points = ((5.0, 10.0, 25.0, LEFT_MCA), (6.0, 11.0, 4.0, ACOM))
    record = VolumeRecord("1.2.3", path, (0,) * 14, "CTA", localizers=points)
    plain = VolumeDataset([record], input_shape=(16, 32, 30), augment=None)
    flipping = VolumeDataset(
        [record], input_shape=(16, 32, 30), augment=AugmentSettings(flip_probability=1.0)
    )

    cropped = plain[0]["localizers"].numpy()
    mirrored = flipping[(0, 5)]["localizers"].numpy()

    # The centred window of 30 columns starts at column 1.
    assert cropped[0].tolist() == [5.0, 10.0, 24.0, LEFT_MCA]
    assert cropped[1].tolist() == [6.0, 11.0, 3.0, ACOM]
    assert (cropped[2:] == -1).all()
    assert mirrored[0].tolist() == [5.0, 10.0, 29.0 - 24.0, RIGHT_MCA]
    assert mirrored[1].tolist() == [6.0, 11.0, 29.0 - 3.0, ACOM]
    assert (mirrored[2:] == -1).all()


def test_localizer_points_skip_unknown_location(caplog):
    points = [
        {"z": 1, "y": 2, "x": 3, "location": "Basilar Tip"},
        {"z": 1, "y": 2, "x": 3, "location": "Left Vertebral Artery"},
    ]

    with caplog.at_level(logging.WARNING):
        result = localizer_points(points, uid="1.2.3")

    assert result == ((1.0, 2.0, 3.0, LABEL_COLUMNS.index("Basilar Tip")),)
    assert "Series 1.2.3: localizer location 'Left Vertebral Artery' is not a label" in caplog.text
