from rsna.labels import (
    ANEURYSM_PRESENT,
    LABEL_COLUMNS,
    LOCATION_COLUMNS,
    TRAIN_CSV_COLUMNS,
    left_right_permutation,
)


def test_train_csv_column_order():
    assert len(TRAIN_CSV_COLUMNS) == 18
    assert TRAIN_CSV_COLUMNS[:4] == ("SeriesInstanceUID", "PatientAge", "PatientSex", "Modality")
    assert TRAIN_CSV_COLUMNS[4] == "Left Infraclinoid Internal Carotid Artery"
    assert TRAIN_CSV_COLUMNS[16] == "Other Posterior Circulation"
    assert TRAIN_CSV_COLUMNS[17] == ANEURYSM_PRESENT


def test_label_order_ends_with_aneurysm_present():
    assert len(LOCATION_COLUMNS) == 13
    assert LABEL_COLUMNS[:13] == LOCATION_COLUMNS
    assert LABEL_COLUMNS[13] == "Aneurysm Present"


def test_left_right_permutation_swaps_pairs():
    permutation = left_right_permutation()
    names = [LABEL_COLUMNS[i] for i in permutation]

    assert names[0] == "Right Infraclinoid Internal Carotid Artery"
    assert names[1] == "Left Infraclinoid Internal Carotid Artery"
    assert names[6] == "Anterior Communicating Artery"
    assert names[9] == "Right Posterior Communicating Artery"
    assert names[11] == "Basilar Tip"
    assert names[13] == ANEURYSM_PRESENT


def test_left_right_permutation_is_involution():
    permutation = left_right_permutation()
    assert [permutation[i] for i in permutation] == list(range(14))
    assert sorted(permutation) == list(range(14))
