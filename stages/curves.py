"""Stage ``curves``: training and ROC curves as PNG images, for viewing without internet.

The Vega-Lite charts of ``dvc plots show`` load their scripts from a CDN; these PNGs,
declared as image plots in dvc.yaml, show the same data offline.
"""

import argparse
import sys
from pathlib import Path

from rsna.logs import configure_logging
from rsna.pictures.curves import plot_roc_curves, plot_training_history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", required=True, help="history CSV of the train stage")
    parser.add_argument("--roc", required=True, help="ROC CSV of the evaluate stage")
    parser.add_argument("--out-dir", required=True, help="folder for training.png and roc.png")
    args = parser.parse_args(argv)
    configure_logging()

    out_dir = Path(args.out_dir)
    plot_training_history(history_csv=args.history, destination=out_dir / "training.png")
    plot_roc_curves(
        roc_csv=args.roc, destination=out_dir / "roc.png", title="ROC curve per label, test split"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
