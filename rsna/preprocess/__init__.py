"""Offline preprocessing: DICOM series -> float16 ``(z, y, x)`` volumes ready for training.

- :mod:`rsna.preprocess.transforms`: array steps (resampling, centre crop or pad, CT
  window, MR percentile scaling);
- :mod:`rsna.preprocess.series`: one series, from its folder to a volume and index record;
- :mod:`rsna.preprocess.runner`: many series in parallel, incremental and crash-safe;
- :mod:`rsna.preprocess.fingerprint`: the keys that decide what is still current;
- :mod:`rsna.preprocess.state`: the incremental-run state, kept apart from the volumes index.
"""
