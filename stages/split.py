"""Stage ``split``: data/manifest.jsonl -> data/splits.csv (patient-level split and folds).

Reads the ``split`` section of params.yaml: ``val_fraction`` and ``test_fraction`` of
patients, the number of ``folds`` over train and val, and the ``seed``.
"""

import argparse
import logging
import sys

from rsna.config import ParamsError, load_section, section_to_dataclass
from rsna.logs import configure_logging
from rsna.split import SplitError, SplitSettings, write_splits

logger = logging.getLogger("stages.split")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (YAML)")
    parser.add_argument("--manifest", required=True, help="manifest of the series (JSONL)")
    parser.add_argument("--out", required=True, help="splits CSV to write")
    args = parser.parse_args(argv)
    configure_logging()

    try:
        section = load_section(args.params, "split")
        settings = section_to_dataclass(SplitSettings, section, section="split")
        write_splits(
            manifest_path=args.manifest,
            out_path=args.out,
            val_fraction=settings.val_fraction,
            test_fraction=settings.test_fraction,
            folds=settings.folds,
            seed=settings.seed,
        )
    except (ParamsError, SplitError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
