"""Settings of the preprocessing step: the ``preprocess`` section of ``params.yaml``."""

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class VolumeSpec:
    """Settings that decide the voxels of a saved volume.

    ``spacing_mm`` and ``shape`` are ``(z, y, x)``; ``ct_window_hu`` is ``(lower, upper)``
    in HU; ``mr_percentiles`` is ``(low, high)`` in percent.
    """

    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]
    ct_window_hu: tuple[float, float]
    mr_percentiles: tuple[float, float]

    def __post_init__(self) -> None:
        _check_triple(self.spacing_mm, name="spacing_mm", kind=float)
        _check_triple(self.shape, name="shape", kind=int)
        _check_bounds(self.ct_window_hu, name="ct_window_hu")
        _check_bounds(self.mr_percentiles, name="mr_percentiles")
        if self.mr_percentiles[0] < 0 or self.mr_percentiles[1] > 100:
            raise ValueError(f"mr_percentiles must lie in [0, 100], got {self.mr_percentiles}")

        # One type per field, so equal settings always give equal fingerprint keys
        # (JSON writes 600 and 600.0 differently).
        object.__setattr__(self, "spacing_mm", tuple(float(v) for v in self.spacing_mm))
        object.__setattr__(self, "ct_window_hu", tuple(float(v) for v in self.ct_window_hu))
        object.__setattr__(self, "mr_percentiles", tuple(float(v) for v in self.mr_percentiles))


@dataclasses.dataclass(frozen=True)
class PreprocessParams:
    """The ``preprocess`` section of ``params.yaml``; see the comments there."""

    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]
    ct_window_hu: tuple[float, float]
    mr_percentiles: tuple[float, float]
    workers: int = 0
    threads_per_worker: int = 1

    def __post_init__(self) -> None:
        self.volume_spec()
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(
                f"workers must be an integer >= 0 (0: one per CPU core), got {self.workers!r}"
            )
        if not isinstance(self.threads_per_worker, int) or self.threads_per_worker < 1:
            raise ValueError(
                f"threads_per_worker must be an integer >= 1, got {self.threads_per_worker!r}"
            )

    def volume_spec(self) -> VolumeSpec:
        """Return the settings that change the saved voxels."""
        return VolumeSpec(
            spacing_mm=self.spacing_mm,
            shape=self.shape,
            ct_window_hu=self.ct_window_hu,
            mr_percentiles=self.mr_percentiles,
        )

    def worker_count(self) -> int:
        """Return the number of worker processes: ``workers``, or the CPU count for 0."""
        return self.workers or os.cpu_count() or 1


def _check_triple(values: tuple, *, name: str, kind: type) -> None:
    if not isinstance(values, tuple) or len(values) != 3:
        raise ValueError(f"{name} must be a list of three values (z, y, x), got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"{name} values must be positive numbers, got {values!r}")
        if kind is int and not isinstance(value, int):
            raise ValueError(f"{name} values must be integers, got {values!r}")


def _check_bounds(values: tuple, *, name: str) -> None:
    if not isinstance(values, tuple) or len(values) != 2:
        raise ValueError(f"{name} must be a list [lower, upper], got {values!r}")
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        raise ValueError(f"{name} values must be numbers, got {values!r}")
    if not values[0] < values[1]:
        raise ValueError(f"{name} must have lower < upper, got {values!r}")


# Built-in defaults of the ``rsna preprocess`` command when no params file is found; the
# same values as the committed params.yaml.
DEFAULT_PARAMS = PreprocessParams(
    spacing_mm=(2.0, 2.0, 2.0),
    shape=(48, 96, 96),
    ct_window_hu=(-100.0, 600.0),
    mr_percentiles=(1.0, 99.0),
)
