"""Stage ``listing``: the series folders of the data root -> data/raw_listing.jsonl.

One line per series folder with its file count and a SHA-256 of the files' names, sizes
and modification times. The stages that read the DICOM files depend on this small file
rather than on the million files themselves, which DVC would hash on every status check.
DVC runs the stage on every ``dvc repro`` (``always_changed``); the stages after it run
only when the listing changed.
"""

import argparse
import logging
import sys
from pathlib import Path

from rsna.listing import ListingError, write_series_listing
from rsna.logs import configure_logging

logger = logging.getLogger("stages.listing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="dataset in the challenge layout")
    parser.add_argument("--out", required=True, help="listing to write (JSONL)")
    args = parser.parse_args(argv)
    configure_logging()

    try:
        write_series_listing(series_root=Path(args.data_root) / "series", out_path=args.out)
    except (ListingError, OSError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
