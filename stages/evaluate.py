"""Stage ``evaluate``: score the best checkpoint on the test split.

Reads the ``evaluate`` section of params.yaml (and ``preprocess``, which must match the
checkpoint's), then writes the metrics JSON (challenge score, per-label and per-modality
AUROC), the ROC curve CSV and the per-series predictions CSV. Invalid params, too many
unusable volumes and an unusable or mismatched checkpoint are logged as one ERROR line,
and the stage exits with status 1.
"""

import argparse
import dataclasses
import logging
import sys

from rsna.config import ParamsError, dataclass_to_section, load_section, section_to_dataclass
from rsna.data import SplitsFileError, TooManyBadVolumesError
from rsna.evaluation import EvaluateSettings, evaluate_checkpoint
from rsna.logs import configure_logging
from rsna.model import ModelConfigError
from rsna.preprocess.settings import PreprocessParams
from rsna.training.checkpoint import CheckpointError

logger = logging.getLogger("stages.evaluate")

# Failures whose message names the cause and the fix; anything else keeps its traceback.
EXPECTED_ERRORS = (
    ParamsError,
    SplitsFileError,
    TooManyBadVolumesError,
    CheckpointError,
    ModelConfigError,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (YAML)")
    parser.add_argument("--checkpoint", default="models/best.pt", help="checkpoint to evaluate")
    parser.add_argument(
        "--volumes", default="data/volumes", help="folder of preprocessed .npy volumes"
    )
    parser.add_argument("--index", default="data/volumes_index.jsonl", help="volume index JSONL")
    parser.add_argument("--splits", default="data/splits.csv", help="splits CSV")
    parser.add_argument("--manifest", default="data/manifest.jsonl", help="manifest JSONL (labels)")
    parser.add_argument("--metrics", default="metrics/evaluate.json", help="metrics JSON to write")
    parser.add_argument("--roc", default="plots/evaluate/roc.csv", help="ROC curve CSV to write")
    parser.add_argument(
        "--predictions", default="plots/evaluate/predictions.csv", help="predictions CSV to write"
    )
    parser.add_argument(
        "--fold", type=int, help="evaluate cross-validation fold K instead of the split"
    )
    args = parser.parse_args(argv)
    configure_logging()

    try:
        _evaluate(args)
    except EXPECTED_ERRORS as error:
        logger.error("%s", error)
        return 1
    return 0


def _evaluate(args: argparse.Namespace) -> None:
    settings = section_to_dataclass(
        EvaluateSettings, load_section(args.params, "evaluate"), section="evaluate"
    )
    preprocess = section_to_dataclass(
        PreprocessParams, load_section(args.params, "preprocess"), section="preprocess"
    )
    evaluate_checkpoint(
        checkpoint_path=args.checkpoint,
        volume_spec=dataclass_to_section(preprocess.volume_spec()),
        volumes_dir=args.volumes,
        index_path=args.index,
        splits_path=args.splits,
        manifest_path=args.manifest,
        metrics_path=args.metrics,
        roc_path=args.roc,
        predictions_path=args.predictions,
        fold=args.fold,
        **dataclasses.asdict(settings),
    )


if __name__ == "__main__":
    sys.exit(main())
