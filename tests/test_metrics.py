import logging

import numpy as np
import pytest

from rsna.labels import ANEURYSM_PRESENT, LABEL_COLUMNS, LOCATION_COLUMNS
from rsna.metrics import challenge_score, per_label_auroc, roc_curves, score_predictions

AP = LABEL_COLUMNS.index(ANEURYSM_PRESENT)


def _example():
    """Six series; AUROC by hand per label (see the comments)."""
    targets = np.zeros((6, 14), dtype=np.int64)
    scores = np.tile(np.linspace(0.1, 0.6, 6), (14, 1)).T.copy()
    # Aneurysm Present: positives 0.5, 0.6 above every negative -> AUC 1.
    targets[4:, AP] = 1
    # Location 0: positives at the two lowest scores -> AUC 0.
    targets[:2, 0] = 1
    # Location 1: positives 0.2 and 0.5 against negatives 0.1, 0.3, 0.4, 0.6:
    # pairs won 1 + 3 = 4 of 8 -> AUC 0.5.
    targets[[1, 4], 1] = 1
    # Location 2: one positive at 0.4 against five negatives, three below -> AUC 0.6.
    targets[3, 2] = 1
    # Location 3 is all ones and locations 4 to 12 all zeros: single class, undefined,
    # except location 12: its positive (0.3) beats the negative 0.2 and ties the
    # negative 0.3, against five negatives -> AUC (1 + 0.5) / 5 = 0.3.
    targets[:, 3] = 1
    targets[0, 12] = 1
    scores[0, 12] = 0.3
    scores[2, 12] = 0.3
    return scores, targets


def test_per_label_auroc_hand_computed():
    scores, targets = _example()

    aucs = per_label_auroc(scores, targets)

    assert list(aucs) == list(LABEL_COLUMNS)
    assert aucs[ANEURYSM_PRESENT] == pytest.approx(1.0)
    assert aucs[LOCATION_COLUMNS[0]] == pytest.approx(0.0)
    assert aucs[LOCATION_COLUMNS[1]] == pytest.approx(0.5)
    assert aucs[LOCATION_COLUMNS[2]] == pytest.approx(0.6)
    assert aucs[LOCATION_COLUMNS[12]] == pytest.approx(0.3)
    for index in range(3, 12):
        assert aucs[LOCATION_COLUMNS[index]] is None


def test_score_leaves_undefined_out_and_warns(caplog):
    scores, targets = _example()

    with caplog.at_level(logging.WARNING):
        score, _ = score_predictions(scores, targets, context="val")

    # 0.5 * (1.0 + mean(0.0, 0.5, 0.6, 0.3))
    assert score == pytest.approx(0.675)
    assert "val: AUROC undefined" in caplog.text
    assert LOCATION_COLUMNS[3] in caplog.text
    assert LOCATION_COLUMNS[0] not in caplog.text


def test_score_weights_match_challenge_formula():
    aucs = {name: 0.7 for name in LOCATION_COLUMNS} | {ANEURYSM_PRESENT: 0.9}

    # (13 * 0.9 + 13 * 0.7) / 26
    assert challenge_score(aucs) == pytest.approx((13 * 0.9 + 13 * 0.7) / 26)


def test_score_undefined_without_aneurysm_present(caplog):
    aucs = {name: 0.7 for name in LOCATION_COLUMNS} | {ANEURYSM_PRESENT: None}

    with caplog.at_level(logging.WARNING):
        assert challenge_score(aucs) is None
    assert "challenge score undefined" in caplog.text


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"shape \(N, 14\)"):
        per_label_auroc(np.zeros((3, 13)), np.zeros((3, 13)))


def test_non_binary_targets_raise():
    targets = np.zeros((3, 14))
    targets[0, 0] = 2
    with pytest.raises(ValueError, match="0 or 1"):
        per_label_auroc(np.zeros((3, 14)), targets)


def test_roc_curves_skip_single_class_labels():
    scores, targets = _example()

    rows = roc_curves(scores, targets)

    labels = {row["label"] for row in rows}
    assert labels == {ANEURYSM_PRESENT, *LOCATION_COLUMNS[:3], LOCATION_COLUMNS[12]}
    present = [(row["fpr"], row["tpr"]) for row in rows if row["label"] == ANEURYSM_PRESENT]
    assert present[0] == (0.0, 0.0)
    assert present[-1] == (1.0, 1.0)
    assert (0.0, 1.0) in present
