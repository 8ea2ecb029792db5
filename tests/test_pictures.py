"""MIP pictures, QC sampling and PNG curves on tiny synthetic volumes and CSVs."""

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from rsna.labels import ANEURYSM_PRESENT, LABEL_COLUMNS
from rsna.pictures import curves, mip, qc

REPO = Path(__file__).resolve().parents[1]
UID_A = "1.2.826.0.1.3680043.8.498.10"
UID_B = "1.2.826.0.1.3680043.8.498.11"
UID_C = "1.2.826.0.1.3680043.8.498.12"

# Volume (z, y, x) = (6, 8, 10) with anisotropic spacing, so a swapped axis or a wrong
# aspect ratio shows.
SHAPE = (6, 8, 10)
SPACING_MM = (2.0, 1.0, 0.5)

# (voxel z, y, x) -> expected (row, column) in each displayed view, worked out by hand from
# the display convention: axial anterior up and patient's left on the right, coronal and
# sagittal superior up, sagittal anterior on the left.
BRIGHT_POINT_CASES = [
    # Superior, anterior, patient's left.
    ((4, 1, 8), {"axial": (1, 8), "coronal": (1, 8), "sagittal": (1, 1)}),
    # Inferior, posterior, patient's right.
    ((0, 6, 2), {"axial": (6, 2), "coronal": (5, 2), "sagittal": (5, 6)}),
]


def _volume_with_point(zyx: tuple[int, int, int], dtype=np.float16) -> np.ndarray:
    volume = np.zeros(SHAPE, dtype=dtype)
    volume[zyx] = 1.0
    return volume


@pytest.mark.parametrize(("zyx", "expected"), BRIGHT_POINT_CASES)
def test_project_views_place_point(zyx, expected):
    views = mip.project_views(_volume_with_point(zyx))

    assert views["axial"].shape == (8, 10)
    assert views["coronal"].shape == (6, 10)
    assert views["sagittal"].shape == (6, 8)
    for view, (row, column) in expected.items():
        expected_image = np.zeros(views[view].shape, dtype=np.float32)
        expected_image[row, column] = 1.0
        np.testing.assert_array_equal(views[view], expected_image, err_msg=view)


@pytest.mark.parametrize(("zyx", "expected"), BRIGHT_POINT_CASES)
def test_view_pixel_matches_hand_mapping(zyx, expected):
    assert mip.view_pixel(zyx, shape=SHAPE) == {
        view: (float(row), float(column)) for view, (row, column) in expected.items()
    }


def test_project_views_ignore_nan():
    volume = np.zeros((2, 2, 2), dtype=np.float32)
    volume[0, 0, 0] = np.nan
    volume[1, 0, 0] = 0.5
    volume[:, 1, 1] = np.nan

    axial = mip.project_views(volume)["axial"]

    assert axial[0, 0] == 0.5
    assert np.isnan(axial[1, 1])
    assert axial[0, 1] == 0.0


@pytest.mark.parametrize(
    ("centre", "slab_mm", "expected"),
    [
        # 4 mm = 2 slices of 2 mm, 4 rows of 1 mm, 8 columns of 0.5 mm around (2, 3, 4).
        ((2.0, 3.0, 4.0), 4.0, [(2, 4), (2, 6), (1, 9)]),
        # Near the edges the slab shifts inside the volume.
        ((0.0, 7.0, 9.0), 4.0, [(0, 2), (4, 8), (2, 10)]),
        # Thicker than the volume: the whole extent.
        ((2.0, 3.0, 4.0), 100.0, [(0, 6), (0, 8), (0, 10)]),
    ],
)
def test_slab_bounds_exact(centre, slab_mm, expected):
    assert mip.slab_bounds(centre, shape=SHAPE, spacing_mm=SPACING_MM, slab_mm=slab_mm) == expected


def test_project_views_slab_keeps_only_slab():
    volume = _volume_with_point((4, 1, 8))
    volume[0, 6, 2] = 0.5

    views = mip.project_views(volume, slab=[(3, 6), (0, 3), (7, 10)])

    assert views["axial"][1, 8] == 1.0
    assert views["axial"][6, 2] == 0.0
    assert views["coronal"][1, 8] == 1.0
    assert views["coronal"][5, 2] == 0.0
    assert views["sagittal"][1, 1] == 1.0
    assert views["sagittal"][5, 6] == 0.0


def test_project_views_reject_2d_array():
    with pytest.raises(ValueError, match=r"shape \(4, 4\) cannot be projected"):
        mip.project_views(np.zeros((4, 4)))


def _panel_pixels(figure, ax, image: np.ndarray) -> np.ndarray:
    """Return the RGB pixels of the PNG inside ``ax``'s box (matplotlib's y axis points up)."""
    box = ax.get_window_extent()
    height = image.shape[0]
    top, bottom = round(height - box.y1), round(height - box.y0)
    return image[top:bottom, round(box.x0) : round(box.x1), :3]


@pytest.mark.parametrize(("zyx", "expected"), BRIGHT_POINT_CASES)
def test_png_shows_point_at_expected_pixel(tmp_path, zyx, expected):
    figure = mip.draw_mip_figure(
        _volume_with_point(zyx), spacing_mm=SPACING_MM, series_uid=UID_A, modality="CTA"
    )
    path = tmp_path / "mip.png"
    mip.save_figure_png(figure, path)
    image = imread(path)

    for ax, view in zip(figure.axes[:3], mip.VIEWS, strict=True):
        panel = _panel_pixels(figure, ax, image)
        n_rows, n_columns = mip.project_views(_volume_with_point(zyx))[view].shape
        # White pixels only: the orientation letters are yellow and the frame is grey.
        rows, columns = np.nonzero(np.all(panel > 0.9, axis=2))
        assert rows.size > 0, f"{view}: no bright pixel in the panel"
        row_fraction = (rows.mean() + 0.5) / panel.shape[0]
        column_fraction = (columns.mean() + 0.5) / panel.shape[1]
        row, column = expected[view]
        # Within a quarter voxel of the voxel centre.
        assert row_fraction == pytest.approx((row + 0.5) / n_rows, abs=0.25 / n_rows), view
        assert column_fraction == pytest.approx((column + 0.5) / n_columns, abs=0.25 / n_columns), (
            view
        )


def test_axial_png_shows_patient_left_on_right(tmp_path):
    # x = 9 is the voxel farthest toward the patient's left.
    figure = mip.draw_mip_figure(
        _volume_with_point((3, 4, 9)), spacing_mm=SPACING_MM, series_uid=UID_A, modality="MRA"
    )
    mip.save_figure_png(figure, tmp_path / "mip.png")
    panel = _panel_pixels(figure, figure.axes[0], imread(tmp_path / "mip.png"))

    _, columns = np.nonzero(np.all(panel > 0.9, axis=2))
    # The last of 10 columns spans 90-100% of the width, less a pixel of rounding.
    assert columns.min() >= 0.89 * panel.shape[1]
    assert columns.max() == panel.shape[1] - 1


def test_png_panels_follow_spacing(tmp_path):
    figure = mip.draw_mip_figure(
        np.zeros(SHAPE, dtype=np.float32), spacing_mm=SPACING_MM, series_uid=UID_A, modality="CTA"
    )
    mip.save_figure_png(figure, tmp_path / "mip.png")

    # Physical width / height in mm: axial 10*0.5 / 8*1, coronal 10*0.5 / 6*2, sagittal 8*1 / 6*2.
    expected_ratios = {"axial": 5.0 / 8.0, "coronal": 5.0 / 12.0, "sagittal": 8.0 / 12.0}
    for ax, view in zip(figure.axes[:3], mip.VIEWS, strict=True):
        box = ax.get_window_extent()
        assert box.width / box.height == pytest.approx(expected_ratios[view], rel=0.02), view


def test_figure_marks_localizers_and_titles(caplog):
    localizers = [
        mip.Localizer(z=4.0, y=1.0, x=8.0, location="Left Middle Cerebral Artery"),
        mip.Localizer(z=7.0, y=1.0, x=1.0, location="Basilar Tip"),
    ]

    with caplog.at_level(logging.WARNING):
        figure = mip.draw_mip_figure(
            np.zeros(SHAPE, dtype=np.float32),
            spacing_mm=SPACING_MM,
            series_uid=UID_A,
            modality="CTA",
            localizers=localizers,
        )

    marked = {}
    for ax, view in zip(figure.axes[:3], mip.VIEWS, strict=True):
        (line,) = [line for line in ax.lines if line.get_label() == "Left Middle Cerebral Artery"]
        marked[view] = (float(line.get_ydata()[0]), float(line.get_xdata()[0]))
        assert not [line for line in ax.lines if line.get_label() == "Basilar Tip"]
    assert marked == {"axial": (1.0, 8.0), "coronal": (1.0, 8.0), "sagittal": (1.0, 1.0)}
    # The slabs pass through the first localizer inside the volume, so it is marked there too.
    assert all(len(ax.lines) == 1 for ax in figure.axes[3:6])
    assert [ax.get_title() for ax in figure.axes[3:6]] == [
        # 20 mm is thicker than this volume along every axis.
        "axial slab, 12 mm (z 0-5)",
        "coronal slab, 8 mm (y 0-7)",
        "sagittal slab, 5 mm (x 0-9)",
    ]
    title = figure.get_suptitle()
    assert UID_A in title
    assert "CTA" in title
    assert "spacing (z, y, x) 2 × 1 × 0.5 mm" in title
    assert "1 localizer(s) outside the volume" in title
    assert "slabs through Left Middle Cerebral Artery" in title
    assert "Basilar Tip" in caplog.text
    legend_texts = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend_texts == ["Left Middle Cerebral Artery"]


def test_slab_row_marks_only_localizers_in_slab():
    localizers = [
        mip.Localizer(z=0.0, y=0.0, x=0.0, location="Basilar Tip"),
        mip.Localizer(z=5.0, y=7.0, x=9.0, location="Anterior Communicating Artery"),
    ]

    figure = mip.draw_mip_figure(
        np.zeros(SHAPE, dtype=np.float32),
        spacing_mm=SPACING_MM,
        series_uid=UID_A,
        modality="CTA",
        localizers=localizers,
        slab_mm=2.0,
    )

    for ax in figure.axes[:3]:
        assert len(ax.lines) == 2
    for ax in figure.axes[3:6]:
        assert [line.get_label() for line in ax.lines] == ["Basilar Tip"]


def test_draw_rejects_bad_spacing():
    with pytest.raises(ValueError, match=rf"series {UID_A}: spacing_mm \[0.0, 1.0, 1.0\]"):
        mip.draw_mip_figure(
            np.zeros(SHAPE), spacing_mm=(0.0, 1.0, 1.0), series_uid=UID_A, modality="CTA"
        )


def test_parse_localizers_rejects_missing_key():
    assert mip.parse_localizers([{"z": 1, "y": 2.5, "x": 3, "location": "Basilar Tip"}]) == [
        mip.Localizer(z=1.0, y=2.5, x=3.0, location="Basilar Tip")
    ]
    with pytest.raises(ValueError, match=r"localizer .* is invalid"):
        mip.parse_localizers([{"z": 1, "y": 2}])


# QC sampling and writing -------------------------------------------------------------


def _write_qc_inputs(root: Path, uids_splits: dict[str, str]) -> tuple[Path, Path, Path]:
    volumes = root / "volumes"
    volumes.mkdir()
    records = []
    for i, uid in enumerate(uids_splits):
        volume = _volume_with_point((i % SHAPE[0], 2, 3))
        np.save(volumes / f"{uid}.npy", volume)
        records.append(
            {
                "SeriesInstanceUID": uid,
                "file": f"{uid}.npy",
                "shape": list(SHAPE),
                "spacing_mm": list(SPACING_MM),
                "Modality": "MRA",
                "localizers_zyx": [{"z": 1, "y": 2, "x": 3, "location": "Basilar Tip"}],
            }
        )
    index = root / "volumes_index.jsonl"
    index.write_text("".join(json.dumps(record) + "\n" for record in records))
    splits = root / "splits.csv"
    with open(splits, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["SeriesInstanceUID", "PatientID", "split", "fold"])
        for uid, split in uids_splits.items():
            writer.writerow([uid, "p" + uid[-2:], split, -1 if split == "test" else 0])
    return index, volumes, splits


def test_select_series_is_deterministic_and_order_free():
    records = [{"SeriesInstanceUID": f"1.2.{i}"} for i in range(20)]
    split_of = {
        record["SeriesInstanceUID"]: "train" if i % 2 else "val" for i, record in enumerate(records)
    }

    first = qc.select_series(records, split_of_series=split_of, split="train", count=4, seed=3)
    again = qc.select_series(
        records[::-1], split_of_series=split_of, split="train", count=4, seed=3
    )
    other_seed = qc.select_series(records, split_of_series=split_of, split="train", count=4, seed=4)

    assert first == again
    assert first != other_seed
    assert len(first) == 4
    assert all(split_of[record["SeriesInstanceUID"]] == "train" for record in first)
    assert [r["SeriesInstanceUID"] for r in first] == sorted(r["SeriesInstanceUID"] for r in first)


def test_select_series_caps_at_split_size():
    records = [{"SeriesInstanceUID": "1.2.1"}, {"SeriesInstanceUID": "1.2.2"}]
    split_of = {"1.2.1": "test", "1.2.2": "train"}

    assert qc.select_series(records, split_of_series=split_of, split="test", count=5, seed=0) == [
        records[0]
    ]
    assert (
        len(qc.select_series(records, split_of_series=split_of, split="all", count=5, seed=0)) == 2
    )


def test_select_series_rejects_unknown_split():
    with pytest.raises(ValueError, match=r"split 'holdout' is invalid; valid values"):
        qc.select_series([], split_of_series={}, split="holdout", count=1, seed=0)


def test_write_qc_pictures_skips_missing_volume(tmp_path, caplog):
    index, volumes, splits = _write_qc_inputs(tmp_path, {UID_A: "val", UID_B: "val", UID_C: "test"})
    (volumes / f"{UID_B}.npy").unlink()
    out_dir = tmp_path / "qc"
    out_dir.mkdir()
    (out_dir / "1.2.3.png").write_bytes(b"stale picture of an earlier sample")

    with caplog.at_level(logging.WARNING):
        written = qc.write_qc_pictures(
            index_path=index,
            volumes_dir=volumes,
            splits_path=splits,
            out_dir=out_dir,
            count=5,
            seed=0,
            split="val",
        )

    assert written == [out_dir / f"{UID_A}.png"]
    assert sorted(path.name for path in out_dir.iterdir()) == [f"{UID_A}.png"]
    assert f"series {UID_B}: skipped QC picture" in caplog.text
    assert imread(written[0]).shape[2] == 4


def test_write_qc_pictures_rejects_shape_mismatch(tmp_path):
    index, volumes, splits = _write_qc_inputs(tmp_path, {UID_A: "train"})
    np.save(volumes / f"{UID_A}.npy", np.zeros((2, 2, 2), dtype=np.float16))

    with pytest.raises(RuntimeError, match="none of the 1 sampled series could be drawn"):
        qc.write_qc_pictures(
            index_path=index,
            volumes_dir=volumes,
            splits_path=splits,
            out_dir=tmp_path / "qc",
            count=1,
            seed=0,
            split="train",
        )


def test_pictures_stage_writes_sample(tmp_path):
    index, volumes, splits = _write_qc_inputs(
        tmp_path, {UID_A: "train", UID_B: "train", UID_C: "val"}
    )
    params = tmp_path / "params.yaml"
    params.write_text("pictures:\n  count: 2\n  seed: 1\n  split: train\n  slab_mm: 10.0\n")
    out_dir = tmp_path / "plots" / "qc"

    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "stages" / "pictures.py"),
            "--params",
            str(params),
            "--index",
            str(index),
            "--volumes",
            str(volumes),
            "--splits",
            str(splits),
            "--out-dir",
            str(out_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out_dir.iterdir()) == [f"{UID_A}.png", f"{UID_B}.png"]


# Curves ------------------------------------------------------------------------------


def _write_history(path: Path, rows: list[list]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "train_loss", "val_loss", "val_score", "lr"])
        writer.writerows(rows)


def _write_roc(path: Path, rows: list[tuple[str, float, float]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "fpr", "tpr"])
        writer.writerows(rows)


def test_read_history_sorts_and_keeps_gaps(tmp_path):
    path = tmp_path / "history.csv"
    _write_history(path, [[2, 0.5, 0.6, 0.8, 1e-4], [1, 0.7, 0.8, "", 1e-3]])

    history = curves.read_history(path)

    assert history["epoch"].tolist() == [1, 2]
    assert np.isnan(history["val_score"][0])
    assert history["val_score"][1] == 0.8


def test_read_history_rejects_missing_column(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,train_loss\n1,0.5\n")

    with pytest.raises(ValueError, match=r"lacks columns \['val_loss', 'val_score', 'lr'\]"):
        curves.read_history(path)


def test_training_history_png(tmp_path):
    history = tmp_path / "history.csv"
    _write_history(history, [[e, 1 / e, 1.2 / e, 0.5 + e / 20, 1e-3 / e] for e in range(1, 6)])

    curves.plot_training_history(history_csv=history, destination=tmp_path / "training.png")

    image = imread(tmp_path / "training.png")
    assert image.shape[:2] == (360, 1200)
    assert image[..., :3].std() > 0.05


def test_read_roc_sorts_points_and_area_is_exact(tmp_path):
    path = tmp_path / "roc.csv"
    # Shuffled points of a curve whose area is 0.5 * 0.75 + 0.5 * 1 = 0.875.
    _write_roc(
        path,
        [
            (ANEURYSM_PRESENT, 0.5, 1.0),
            (ANEURYSM_PRESENT, 0.0, 0.0),
            (ANEURYSM_PRESENT, 1.0, 1.0),
            (ANEURYSM_PRESENT, 0.0, 0.5),
        ],
    )

    roc = curves.read_roc(path)

    assert list(roc) == [ANEURYSM_PRESENT]
    fpr, tpr = roc[ANEURYSM_PRESENT]
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert curves.area_under_curve(fpr, tpr) == 0.875


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("Left Carotid", 0.0, 0.0)], r"unknown labels \['Left Carotid'\]"),
        ([(ANEURYSM_PRESENT, 0.0, 1.5)], r"fpr and tpr must be numbers in \[0, 1\]"),
    ],
)
def test_read_roc_rejects_bad_rows(tmp_path, rows, message):
    path = tmp_path / "roc.csv"
    _write_roc(path, rows)

    with pytest.raises(ValueError, match=message):
        curves.read_roc(path)


def test_roc_png_with_undefined_label(tmp_path):
    path = tmp_path / "roc.csv"
    rows = []
    for label in LABEL_COLUMNS[1:]:
        rows += [(label, 0.0, 0.0), (label, 0.25, 0.75), (label, 1.0, 1.0)]
    _write_roc(path, rows)

    curves.plot_roc_curves(roc_csv=path, destination=tmp_path / "roc.png")

    image = imread(tmp_path / "roc.png")
    assert image.shape[:2] == (1160, 1200)


def test_curves_stage_writes_both_pngs(tmp_path):
    history, roc = tmp_path / "history.csv", tmp_path / "roc.csv"
    _write_history(history, [[1, 0.7, 0.8, 0.6, 1e-3], [2, 0.5, 0.6, 0.7, 5e-4]])
    _write_roc(roc, [(ANEURYSM_PRESENT, 0.0, 0.0), (ANEURYSM_PRESENT, 1.0, 1.0)])
    out_dir = tmp_path / "curves"

    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "stages" / "curves.py"),
            "--history",
            str(history),
            "--roc",
            str(roc),
            "--out-dir",
            str(out_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out_dir.iterdir()) == ["roc.png", "training.png"]


def test_roc_png_without_any_defined_curve(tmp_path):
    roc_csv = tmp_path / "roc.csv"
    roc_csv.write_text("label,fpr,tpr\n")

    curves.plot_roc_curves(roc_csv=roc_csv, destination=tmp_path / "roc.png")

    assert (tmp_path / "roc.png").stat().st_size > 0
