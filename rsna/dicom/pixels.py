"""Pixel decode, modality LUT, padding and MONOCHROME1 handling, one frame at a time.

Native (uncompressed) little- or big-endian pixel data is read with ``readinto`` from the
offset found by the header pass straight into a reusable one-frame integer buffer. The
modality LUT then writes float32 values from that buffer into the caller's output slice. No
whole-series integer array and no float64 intermediate is ever built. Compressed transfer
syntaxes (RLE, JPEG, JPEG-LS, JPEG 2000) are decoded frame by frame by pydicom's decoders,
which use the pylibjpeg plugins. Decoded values match pydicom's ``pixel_array``: for
BitsStored < BitsAllocated, signed values are sign-extended from the high bit and unsigned
values are masked to BitsStored bits, as pydicom 3 does.
"""

import logging
import struct
from typing import IO

import numpy as np
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from rsna.dicom.errors import SeriesError
from rsna.dicom.headers import FileHeader

logger = logging.getLogger(__name__)

NATIVE_TRANSFER_SYNTAXES = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian}
)
MAX_OPEN_FILES = 16
# Exceptions pydicom's decoders and the pylibjpeg plugins raise on corrupt or truncated data.
DECODE_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    RuntimeError,
    NotImplementedError,
    KeyError,
    IndexError,
    struct.error,
)


class FrameDecoder:
    """Decode frames of the files of one series, keeping a few files open.

    Use as a context manager; :meth:`decode_into` writes one frame's float32 values into an
    output slice of shape (Rows, Columns).
    """

    def __init__(self, *, series: str) -> None:
        self._series = series
        self._handles: dict[str, IO[bytes]] = {}
        self._buffers: dict[tuple[int, int, str], np.ndarray] = {}

    def __enter__(self) -> "FrameDecoder":
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def read_raw(self, header: FileHeader, frame: int) -> np.ndarray:
        """Return the stored values of one frame as a (Rows, Columns) integer array.

        For native data the array is a reused buffer, valid until the next call.
        """
        check_decodable(header, series=self._series)
        try:
            if _is_native(header):
                return self._read_native(header, frame)
            return self._read_encapsulated(header, frame)
        except DECODE_ERRORS as error:
            raise SeriesError(
                f"series {self._series}: decoding frame {frame} of file {header.name} "
                f"(transfer syntax {header.transfer_syntax_uid}) failed: {error}. "
                "The file may be truncated or corrupt; re-export or remove it.",
                series=self._series,
            ) from error

    def _handle(self, path: str) -> IO[bytes]:
        handle = self._handles.get(path)
        if handle is None:
            if len(self._handles) >= MAX_OPEN_FILES:
                oldest = next(iter(self._handles))
                self._handles.pop(oldest).close()
            handle = open(path, "rb")  # noqa: SIM115 -- closed in __exit__ or on eviction
            self._handles[path] = handle
        return handle

    def _read_native(self, header: FileHeader, frame: int) -> np.ndarray:
        dtype = native_dtype(header)
        key = (header.rows, header.columns, dtype.str)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = np.empty((header.rows, header.columns), dtype=dtype)
            self._buffers[key] = buffer
        frame_bytes = buffer.nbytes
        handle = self._handle(header.path)
        handle.seek(header.pixel_data_offset + frame * frame_bytes)
        count = handle.readinto(buffer.reshape(-1).view(np.uint8))
        if count != frame_bytes:
            raise ValueError(f"expected {frame_bytes} bytes of pixel data, the file has {count}")
        correct_unused_bits(buffer, header)
        return buffer

    def _read_encapsulated(self, header: FileHeader, frame: int) -> np.ndarray:
        decoder = get_decoder(UID(header.transfer_syntax_uid))
        handle = self._handle(header.path)
        handle.seek(header.pixel_data_offset)
        array, _ = decoder.as_array(
            handle,
            index=frame,
            raw=True,
            rows=header.rows,
            columns=header.columns,
            samples_per_pixel=header.samples_per_pixel,
            bits_allocated=header.bits_allocated,
            bits_stored=header.bits_stored,
            pixel_representation=header.pixel_representation,
            photometric_interpretation=header.photometric_interpretation,
            number_of_frames=header.number_of_frames,
            pixel_keyword="PixelData",
        )
        return array.reshape(header.rows, header.columns)


def _is_native(header: FileHeader) -> bool:
    return (
        header.transfer_syntax_uid in NATIVE_TRANSFER_SYNTAXES
        and header.bits_allocated in (8, 16, 32)
        and header.samples_per_pixel == 1
        and header.pixel_data_length is not None
    )


def native_dtype(header: FileHeader) -> np.dtype:
    """Return the numpy dtype of native pixel data: byte order, signedness and width."""
    order = ">" if header.transfer_syntax_uid == ExplicitVRBigEndian else "<"
    kind = "i" if header.pixel_representation == 1 else "u"
    return np.dtype(f"{order}{kind}{header.bits_allocated // 8}")


def correct_unused_bits(values: np.ndarray, header: FileHeader) -> None:
    """Sign-extend (signed) or mask (unsigned) values in place when BitsStored < BitsAllocated.

    The bits above HighBit may hold overlays or garbage (DICOM PS3.5 section 8.1.1).
    """
    unused = header.bits_allocated - header.bits_stored
    if unused <= 0 or header.bits_stored <= 0:
        return
    if header.pixel_representation == 1:
        np.left_shift(values, unused, out=values)
        np.right_shift(values, unused, out=values)
    else:
        np.bitwise_and(values, (1 << header.bits_stored) - 1, out=values)


def check_decodable(header: FileHeader, *, series: str) -> None:
    """Raise SeriesError naming the transfer syntax when no installed decoder handles it."""
    if header.pixel_data_offset is None:
        raise SeriesError(
            f"series {series}: file {header.name} has pixel data that cannot be located "
            f"(transfer syntax {header.transfer_syntax_uid}, for example deflated); "
            "convert it to an uncompressed or RLE transfer syntax.",
            series=series,
        )
    if _is_native(header):
        return
    try:
        decoder = get_decoder(UID(header.transfer_syntax_uid))
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        raise SeriesError(
            f"series {series}: no decoder for transfer syntax {header.transfer_syntax_uid} "
            f"({UID(header.transfer_syntax_uid).name}) of file {header.name}. The pylibjpeg "
            "plugins in requirements.txt (pylibjpeg-libjpeg, pylibjpeg-openjpeg, "
            "pylibjpeg-rle) decode RLE, JPEG, JPEG-LS and JPEG 2000: install them if this is "
            "one of those, otherwise convert the files to one of them.",
            series=series,
        )


def apply_modality_lut(raw: np.ndarray, out: np.ndarray, *, slope: float, intercept: float) -> None:
    """Write ``raw * slope + intercept`` into the float32 array ``out``, computed in float32.

    DICOM PS3.3 C.11.1 (Modality LUT), linear form given by RescaleSlope and
    RescaleIntercept. ``out`` may be a strided view of a larger array.
    """
    if slope == 1.0:
        np.copyto(out, raw, casting="unsafe")
    else:
        np.multiply(raw, np.float32(slope), out=out, casting="unsafe")
    if intercept != 0.0:
        np.add(out, np.float32(intercept), out=out)


def padding_mask(raw: np.ndarray, header: FileHeader) -> np.ndarray | None:
    """Return the pixels equal to PixelPaddingValue (or within PixelPaddingRangeLimit), or None.

    DICOM PS3.3 C.7.5.1.1.2: the padding value and range are in stored-value units.
    """
    value = header.pixel_padding_value
    if value is None:
        return None
    limit = header.pixel_padding_range_limit
    if limit is None:
        return raw == value
    low, high = min(value, limit), max(value, limit)
    return (raw >= low) & (raw <= high)


def stored_value_range(header: FileHeader) -> tuple[int, int]:
    """Return the smallest and largest stored value BitsStored and PixelRepresentation allow."""
    bits = header.bits_stored or header.bits_allocated or 16
    if header.pixel_representation == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def invert_monochrome1(
    out: np.ndarray, header: FileHeader, *, slope: float, intercept: float
) -> None:
    """Mirror MONOCHROME1 values in place so that larger values display brighter.

    MONOCHROME1 means the smallest value displays as white (DICOM PS3.3 C.7.6.3.1.2). The
    mirror is taken over the modality-LUT image of the stored value range, so a value v
    becomes ``lut(min_stored) + lut(max_stored) - v`` and the range itself is unchanged.
    """
    low, high = stored_value_range(header)
    total = slope * (low + high) + 2.0 * intercept
    np.subtract(np.float32(total), out, out=out)
