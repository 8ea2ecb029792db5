"""Column names of the challenge's ``train.csv`` and the label order used everywhere.

The model's 14 logits follow :data:`LABEL_COLUMNS`: the 13 artery locations in the
order of ``train.csv``, then ``Aneurysm Present``.
"""

LOCATION_COLUMNS: tuple[str, ...] = (
    "Left Infraclinoid Internal Carotid Artery",
    "Right Infraclinoid Internal Carotid Artery",
    "Left Supraclinoid Internal Carotid Artery",
    "Right Supraclinoid Internal Carotid Artery",
    "Left Middle Cerebral Artery",
    "Right Middle Cerebral Artery",
    "Anterior Communicating Artery",
    "Left Anterior Cerebral Artery",
    "Right Anterior Cerebral Artery",
    "Left Posterior Communicating Artery",
    "Right Posterior Communicating Artery",
    "Basilar Tip",
    "Other Posterior Circulation",
)
ANEURYSM_PRESENT = "Aneurysm Present"
LABEL_COLUMNS: tuple[str, ...] = (*LOCATION_COLUMNS, ANEURYSM_PRESENT)

TRAIN_CSV_COLUMNS: tuple[str, ...] = (
    "SeriesInstanceUID",
    "PatientAge",
    "PatientSex",
    "Modality",
    *LABEL_COLUMNS,
)
LOCALIZER_CSV_COLUMNS: tuple[str, ...] = (
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "coordinates",
    "location",
)

# Values of the ``Modality`` column of train.csv; they differ from the DICOM Modality tag.
MODALITIES: tuple[str, ...] = ("CTA", "MRA", "MRI T2", "MRI T1post")
PATIENT_SEXES: tuple[str, ...] = ("Female", "Male")

# Challenge score weights: Aneurysm Present counts 13 times, each location once.
ANEURYSM_PRESENT_WEIGHT = 13.0
LOCATION_WEIGHT = 1.0


def left_right_permutation() -> list[int]:
    """Return the label index permutation that mirrors the patient's left and right.

    ``labels[..., perm]`` gives the labels of the left-right flipped volume: every
    ``Left X`` column takes the value of ``Right X`` and the reverse. Midline labels map
    to themselves. Applying the permutation twice gives the identity.
    """
    index = {name: i for i, name in enumerate(LABEL_COLUMNS)}
    permutation = []
    for name in LABEL_COLUMNS:
        if name.startswith("Left "):
            partner = "Right " + name.removeprefix("Left ")
        elif name.startswith("Right "):
            partner = "Left " + name.removeprefix("Right ")
        else:
            partner = name
        permutation.append(index[partner])
    return permutation
