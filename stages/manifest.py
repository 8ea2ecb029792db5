"""Stage ``manifest``: train.csv, train_localizers.csv and DICOM headers -> data/manifest.jsonl.

Reads the ``manifest`` section of params.yaml. Series that cannot be used are listed in
the rejects file with the reason. The stage exits with status 1 only when no series is
usable, or when a CSV file is missing or malformed.
"""

import argparse
import logging
import sys

from rsna.config import ParamsError, load_section, section_to_dataclass
from rsna.logs import configure_logging
from rsna.manifest import ManifestError, ManifestSettings, build_manifest
from rsna.signals import sigterm_raises

logger = logging.getLogger("stages.manifest")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (YAML)")
    parser.add_argument("--data-root", required=True, help="dataset in the challenge layout")
    parser.add_argument("--out", required=True, help="manifest to write (JSONL)")
    parser.add_argument("--rejects", required=True, help="rejected series to write (JSONL)")
    args = parser.parse_args(argv)
    configure_logging()

    try:
        section = load_section(args.params, "manifest")
        settings = section_to_dataclass(ManifestSettings, section, section="manifest")
        with sigterm_raises():
            build_manifest(
                data_root=args.data_root,
                out_path=args.out,
                rejects_path=args.rejects,
                workers=settings.workers,
            )
    except (ParamsError, ManifestError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
