import pytest

from rsna.uid import InvalidUIDError, validate_uid


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.840.10008.5.1.4.1.1.2", "0.0", "1." + "9" * 62])
def test_validate_uid_accepts(uid):
    assert validate_uid(uid) == uid


@pytest.mark.parametrize(
    "uid",
    ["../x", "1.2/3", "", "1", "1..2", "1.02", "1.2.", "a.b", "1.2 ", "1." + "9" * 63, None],
)
def test_validate_uid_rejects(uid):
    with pytest.raises(InvalidUIDError, match="not a valid DICOM UID"):
        validate_uid(uid)


def test_validate_uid_names_field():
    with pytest.raises(InvalidUIDError, match=r"SOPInstanceUID '\.\./x'"):
        validate_uid("../x", what="SOPInstanceUID")
