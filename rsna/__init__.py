"""Training pipeline for intracranial aneurysm detection on the RSNA 2025 challenge data.

Conventions used throughout the package:

- Arrays of voxels have axis order ``(z, y, x)`` = (slices, rows, columns). Spacing is a
  ``(z, y, x)`` tuple in millimetres. A batch given to the model is ``(N, C, z, y, x)``.
- After :func:`rsna.dicom.read_series`, every volume is in the DICOM patient coordinate
  system (LPS): index ``z`` increases toward the patient's head (superior), ``y`` toward
  the back (posterior) and ``x`` toward the patient's left. An axial slice ``voxels[k]``
  then shows the patient's left on the right of the image, as radiologists display it.
- Intensities are float32 after the modality LUT: Hounsfield units for CT, scanner
  units for MR.

The library never reads ``params.yaml``. Stage scripts in ``stages/`` and the ``rsna``
command read it and pass plain keyword arguments.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
