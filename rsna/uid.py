"""Validation of DICOM unique identifiers, which become file and folder names here."""

import re

# PS3.5 section 9: components of digits separated by dots, no leading zero in a
# multi-digit component, 64 characters at most.
_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
UID_MAX_LENGTH = 64


class InvalidUIDError(ValueError):
    """A string that is not a valid DICOM UID."""


def validate_uid(uid: str, *, what: str = "SeriesInstanceUID") -> str:
    """Return ``uid`` unchanged, or raise :class:`InvalidUIDError` naming the value.

    Only valid UIDs may become file names: a value such as ``../x`` must never reach a
    path.
    """
    if not isinstance(uid, str) or len(uid) > UID_MAX_LENGTH or not _UID_PATTERN.match(uid):
        raise InvalidUIDError(
            f"{what} {uid!r} is not a valid DICOM UID: expected digits and dots, "
            f"at most {UID_MAX_LENGTH} characters (DICOM PS3.5 section 9). "
            "Fix the value in the CSV or the DICOM header."
        )
    return uid
