"""Plausibility check of CT values after the modality LUT, for wrong rescale tags.

Some CT files carry RescaleSlope/RescaleIntercept that do not match their stored values:
stored values that already are Hounsfield units with RescaleIntercept -1024, or unsigned
values stored as HU + 1024 without any rescale tags. Every head CT contains air around
the head, at about -1000 HU, and few values below it. The check runs on three sample
slices, at 25, 50 and 75 % of the stack. PixelPaddingValue pixels are left out, and so is
a constant fill below ``AIR_BAND_HU``, because scanners fill the corners outside the
circular field of view with one value such as -2000 or -3024 without always declaring it
as padding. A LUT is plausible when at least ``MIN_AIR_FRACTION`` of the values lie in
``AIR_BAND_HU`` and at most ``MAX_BELOW_AIR_FRACTION`` lie below it.

1. If the header's LUT is plausible, keep it.
2. Otherwise apply the first plausible correction to every slice, with a warning: ignore
   RescaleIntercept (the stored values already are HU), then subtract 1024 (the stored
   values are HU + 1024).
3. Otherwise keep the header's LUT and warn that the values look wrong.
"""

from dataclasses import dataclass

import numpy as np

AIR_HU = -1024.0
AIR_BAND_HU = (-1200.0, -800.0)
MIN_AIR_FRACTION = 0.01
MAX_BELOW_AIR_FRACTION = 0.02
SAMPLE_FRACTIONS = (0.25, 0.5, 0.75)
SAMPLE_STRIDE = 4


@dataclass(frozen=True)
class InterceptCorrection:
    """A correction of the RescaleIntercept of every CT slice: its name and its rule."""

    name: str
    ignore_intercept: bool = False
    extra_offset: float = 0.0

    def intercept(self, header_intercept: float) -> float:
        """Return the intercept to use in place of the header's ``header_intercept``."""
        base = 0.0 if self.ignore_intercept else header_intercept
        return base + self.extra_offset


HEADER_LUT = InterceptCorrection("header")
CORRECTIONS = (
    InterceptCorrection("RescaleIntercept ignored", ignore_intercept=True),
    InterceptCorrection("1024 subtracted", extra_offset=-1024.0),
)


@dataclass(frozen=True)
class SampleSlice:
    """Stored values of one sample slice (subsampled), its LUT and its padding mask."""

    raw: np.ndarray
    slope: float
    intercept: float
    padding: np.ndarray | None


def value_fractions(
    samples: list[SampleSlice], correction: InterceptCorrection
) -> tuple[float, float]:
    """Return the fractions of sample values in AIR_BAND_HU and below it under ``correction``."""
    in_band = 0
    below = 0
    total = 0
    for sample in samples:
        values = sample.raw.astype(np.float32) * np.float32(sample.slope)
        values += np.float32(correction.intercept(sample.intercept))
        if sample.padding is not None:
            values = values[~sample.padding]
        values = _without_constant_fill(values)
        in_band += int(np.count_nonzero((values >= AIR_BAND_HU[0]) & (values <= AIR_BAND_HU[1])))
        below += int(np.count_nonzero(values < AIR_BAND_HU[0]))
        total += values.size
    if total == 0:
        return 0.0, 0.0
    return in_band / total, below / total


def _without_constant_fill(values: np.ndarray) -> np.ndarray:
    """Drop the most frequent value when it lies below the air band (out-of-view fill)."""
    if values.size == 0:
        return values
    unique, counts = np.unique(values, return_counts=True)
    mode = unique[np.argmax(counts)]
    if mode >= AIR_BAND_HU[0]:
        return values
    return values[values != mode]


def is_plausible(samples: list[SampleSlice], correction: InterceptCorrection) -> bool:
    """Return whether CT values under ``correction`` show air and little below it."""
    in_band, below = value_fractions(samples, correction)
    return in_band >= MIN_AIR_FRACTION and below <= MAX_BELOW_AIR_FRACTION


def choose_correction(
    samples: list[SampleSlice], *, has_rescale: bool, intercept: float
) -> tuple[InterceptCorrection, str | None]:
    """Return the intercept correction for a CT series and a warning, or None when all is well."""
    if is_plausible(samples, HEADER_LUT):
        if not has_rescale:
            return HEADER_LUT, "CT without RescaleSlope/RescaleIntercept: stored values used as HU"
        return HEADER_LUT, None
    tags = f"RescaleIntercept {intercept:g}" if has_rescale else "no rescale tags"
    for correction in CORRECTIONS:
        if correction.ignore_intercept and (not has_rescale or intercept == 0.0):
            continue
        if is_plausible(samples, correction):
            return correction, (
                f"CT values with {tags} do not look like HU (no air near -1000 HU, or many "
                f"values below {AIR_BAND_HU[0]:g} HU); with the {correction.name} they do, so "
                "that correction was applied to every slice"
            )
    return HEADER_LUT, (
        f"CT values with {tags} do not look like HU on the sample slices (no air between "
        f"{AIR_BAND_HU[0]:g} and {AIR_BAND_HU[1]:g} HU, or many values below); check "
        "RescaleSlope/RescaleIntercept of this series"
    )
