"""Stage ``sample``: write the synthetic sample dataset in the challenge layout.

Reads the ``sample`` section and ``data.root`` of params.yaml; ``--data-root`` overrides
the latter. When the data root names another folder than ``--out``, the pipeline trains
on that dataset instead, so the stage writes only the two CSV headers and an empty
``series`` folder, which takes a moment.
"""

import argparse
import logging
import sys
from pathlib import Path

from rsna.config import ParamsError, load_section, section_to_dataclass
from rsna.logs import configure_logging
from rsna.sample import SampleSettings, write_sample_dataset
from rsna.signals import sigterm_raises

logger = logging.getLogger("stages.sample")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (YAML)")
    parser.add_argument("--out", required=True, help="folder to write the dataset into")
    parser.add_argument(
        "--data-root", help="dataset the pipeline reads (default: data.root of the params file)"
    )
    args = parser.parse_args(argv)
    configure_logging()

    try:
        section = load_section(args.params, "sample")
        settings = section_to_dataclass(SampleSettings, section, section="sample")
        data_root = args.data_root or load_section(args.params, "data").get("root")
    except ParamsError as error:
        logger.error("%s", error)
        return 1
    if not data_root:
        logger.error("params file %s has no data.root; set it or pass --data-root", args.params)
        return 1
    series = settings.series
    if Path(data_root).resolve() != Path(args.out).resolve():
        logger.info("data.root is %s, not %s: writing an empty sample", data_root, args.out)
        series = 0
    with sigterm_raises():
        write_sample_dataset(args.out, series=series, seed=settings.seed, workers=settings.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
