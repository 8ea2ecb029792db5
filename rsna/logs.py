"""Console logging set-up for stage scripts and the ``rsna`` command.

Library modules only create loggers with ``logging.getLogger(__name__)``. The entry
points call :func:`configure_logging` once.
"""

import logging
import os
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int | str = logging.INFO) -> None:
    """Send log records of level ``level`` and above to standard error."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)


def progress_disabled() -> bool:
    """Return whether progress bars should be hidden: set ``RSNA_NO_PROGRESS=1`` or ``CI``.

    Progress bars redraw a line many times a second, which clutters CI logs.
    """
    return os.environ.get("RSNA_NO_PROGRESS", "") not in ("", "0") or bool(os.environ.get("CI"))
