"""Training of the 3D classifiers: settings, loop, checkpoints, tracking and distributed runs.

:func:`launch_training` is what the train stage calls: it starts one process per device
when ``processes`` > 1 (torchrun or spawn) and runs :func:`rsna.training.trainer.run_training`
in each.
"""

import logging
import os
from collections.abc import Sequence
from typing import Any

from rsna.training.distributed import (
    init_distributed,
    launch_spawn,
    launch_torchrun,
    launched_by_torchrun,
    shutdown,
)
from rsna.training.settings import TrainSettings
from rsna.training.trainer import TrainPaths, run_training

logger = logging.getLogger(__name__)


def launch_training(
    *,
    settings: TrainSettings,
    volume_spec: dict[str, Any],
    paths: TrainPaths,
    fold: int | None,
    script: str | os.PathLike,
    argv: Sequence[str],
    log_level: int | str = logging.INFO,
) -> int:
    """Train in this process, or start ``settings.processes`` processes; return an exit status.

    With torchrun, ``script argv`` is run again in each process (the command of this
    process); torchrun's processes land here too and train directly.
    """
    kwargs = {"settings": settings, "volume_spec": volume_spec, "paths": paths, "fold": fold}
    if settings.processes > 1 and not launched_by_torchrun():
        if settings.launcher == "torchrun":
            return launch_torchrun(script=script, argv=argv, processes=settings.processes)
        launch_spawn(
            run_training,
            processes=settings.processes,
            backend=settings.backend,
            device=settings.device,
            log_level=log_level,
            kwargs=kwargs,
        )
        return 0

    context = init_distributed(device=settings.device, backend=settings.backend)
    try:
        run_training(context=context, **kwargs)
    finally:
        shutdown(context)
    return 0


__all__ = ["TrainPaths", "TrainSettings", "launch_training", "run_training"]
