"""Stage ``aggregate`` of cv/dvc.yaml: combine per-fold metrics into mean and spread.

Reads the ``cv`` section of params.yaml for the list of folds, the per-fold evaluate
metrics and training histories, and writes the summary JSONs and a PNG of the fold scores.
"""

import argparse
import dataclasses
import sys

from rsna.config import load_section, section_to_dataclass
from rsna.cross_validation import write_cv_summary
from rsna.logs import configure_logging


@dataclasses.dataclass(frozen=True)
class CrossValidationSettings:
    folds: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.folds, tuple) or not self.folds:
            raise ValueError(f"folds {self.folds!r} must be a non-empty list of fold indices")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (YAML)")
    parser.add_argument(
        "--fold-metrics", required=True, help="path of each fold's metrics JSON, with {fold}"
    )
    parser.add_argument(
        "--fold-history", help="path of each fold's training history CSV, with {fold}"
    )
    parser.add_argument("--summary", required=True, help="summary metrics JSON to write")
    parser.add_argument("--auc", required=True, help="per-label AUROC summary JSON to write")
    parser.add_argument("--picture", required=True, help="PNG of the fold scores to write")
    args = parser.parse_args(argv)
    configure_logging()

    settings = section_to_dataclass(
        CrossValidationSettings, load_section(args.params, "cv"), section="cv"
    )
    write_cv_summary(
        folds=settings.folds,
        fold_metrics_pattern=args.fold_metrics,
        fold_history_pattern=args.fold_history,
        summary_path=args.summary,
        auc_path=args.auc,
        picture_path=args.picture,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
