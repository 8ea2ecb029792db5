"""Stage ``train``: train the 3D ResNet on the preprocessed volumes.

Reads the ``train`` section of params.yaml (and ``preprocess``, whose voxel settings are
stored in the checkpoints), then writes ``best.pt`` and ``last.pt`` into the models
folder, the metrics JSON, the per-epoch history CSV and the activation statistics CSV.
Run again after a crash or a kill, the same command continues from ``last.pt``.
Invalid params, too many unusable volumes, an unusable checkpoint and a diverging loss
are logged as one ERROR line, and the stage exits with status 1.
"""

import argparse
import logging
import sys

from rsna.config import ParamsError, dataclass_to_section, load_section, section_to_dataclass
from rsna.data import SplitsFileError, TooManyBadVolumesError
from rsna.logs import configure_logging
from rsna.model import ModelConfigError
from rsna.preprocess.settings import PreprocessParams
from rsna.training import TrainPaths, launch_training
from rsna.training.checkpoint import CheckpointError
from rsna.training.distributed import process_log_level
from rsna.training.settings import train_settings_from_section
from rsna.training.trainer import NonFiniteLossError

logger = logging.getLogger("stages.train")

# Failures whose message names the cause and the fix; anything else keeps its traceback.
EXPECTED_ERRORS = (
    ParamsError,
    SplitsFileError,
    TooManyBadVolumesError,
    CheckpointError,
    ModelConfigError,
    NonFiniteLossError,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (YAML)")
    parser.add_argument(
        "--volumes", default="data/volumes", help="folder of preprocessed .npy volumes"
    )
    parser.add_argument("--index", default="data/volumes_index.jsonl", help="volume index JSONL")
    parser.add_argument("--splits", default="data/splits.csv", help="splits CSV")
    parser.add_argument("--manifest", default="data/manifest.jsonl", help="manifest JSONL (labels)")
    parser.add_argument("--models-dir", default="models", help="folder for best.pt and last.pt")
    parser.add_argument("--metrics", default="metrics/train.json", help="metrics JSON to write")
    parser.add_argument(
        "--history", default="plots/train/history.csv", help="per-epoch CSV to write"
    )
    parser.add_argument(
        "--activations", help="activation statistics CSV to write (none when not given)"
    )
    parser.add_argument("--fold", type=int, help="cross-validation fold to hold out for validation")
    args = parser.parse_args(argv)
    configure_logging(process_log_level())

    try:
        return _train(args, argv)
    except EXPECTED_ERRORS as error:
        logger.error("%s", error)
        return 1


def _train(args: argparse.Namespace, argv: list[str] | None) -> int:
    settings = train_settings_from_section(load_section(args.params, "train"))
    preprocess = section_to_dataclass(
        PreprocessParams, load_section(args.params, "preprocess"), section="preprocess"
    )
    paths = TrainPaths(
        volumes_dir=args.volumes,
        index=args.index,
        splits=args.splits,
        manifest=args.manifest,
        models_dir=args.models_dir,
        metrics=args.metrics,
        history=args.history,
        activations=args.activations,
    )
    return launch_training(
        settings=settings,
        volume_spec=dataclass_to_section(preprocess.volume_spec()),
        paths=paths,
        fold=args.fold,
        script=__file__,
        argv=sys.argv[1:] if argv is None else argv,
    )


if __name__ == "__main__":
    sys.exit(main())
