"""Stage ``pictures``: MIP pictures of a random sample of preprocessed volumes for QC.

Reads the ``pictures`` section of params.yaml and writes ``<SeriesInstanceUID>.png`` files
into the output folder, which dvc.yaml declares as an image plot.
"""

import argparse
import dataclasses
import logging
import sys

from rsna.config import load_section, section_to_dataclass
from rsna.logs import configure_logging
from rsna.pictures.qc import SPLITS, write_qc_pictures

logger = logging.getLogger("stages.pictures")


@dataclasses.dataclass(frozen=True)
class PicturesSettings:
    count: int
    seed: int
    split: str
    slab_mm: float

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"count {self.count!r} must be an integer >= 1")
        if self.split not in SPLITS:
            raise ValueError(f"split {self.split!r} must be one of {list(SPLITS)}")
        if not isinstance(self.slab_mm, int | float) or self.slab_mm <= 0:
            raise ValueError(f"slab_mm {self.slab_mm!r} must be a number > 0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (YAML)")
    parser.add_argument("--index", required=True, help="volumes index (JSONL)")
    parser.add_argument("--volumes", required=True, help="folder of the .npy volumes")
    parser.add_argument("--splits", required=True, help="splits CSV")
    parser.add_argument("--out-dir", required=True, help="folder for the PNG pictures")
    args = parser.parse_args(argv)
    configure_logging()

    settings = section_to_dataclass(
        PicturesSettings, load_section(args.params, "pictures"), section="pictures"
    )
    write_qc_pictures(
        index_path=args.index,
        volumes_dir=args.volumes,
        splits_path=args.splits,
        out_dir=args.out_dir,
        count=settings.count,
        seed=settings.seed,
        split=settings.split,
        slab_mm=float(settings.slab_mm),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
