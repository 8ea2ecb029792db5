"""Stage ``preprocess``: every series of the manifest -> a float16 volume in data/volumes.

Reads ``data.root`` and the ``preprocess`` section of params.yaml. The index describes the
volumes only, so a code change that leaves them byte-identical leaves it unchanged and
does not retrain the model. dvc.yaml declares the volumes folder and the incremental
state ``persist: true``, so DVC does not delete them before it reruns the stage, and
series whose fingerprint key in the state is unchanged are not processed again (see
:mod:`rsna.preprocess.state`). ``dvc exp run --temp`` and ``--queue`` run in a fresh copy
of the repository where DVC checks out the persisted outputs of the base commit from the
cache: they start from that commit's volumes, or from none when the cache lacks them.
SIGTERM stops the stage as Ctrl-C does, with exit status 143.
"""

import argparse
import logging
import sys
from pathlib import Path

from rsna.config import load_section, section_to_dataclass
from rsna.fileio import read_jsonl
from rsna.logs import configure_logging
from rsna.preprocess.runner import jobs_from_manifest, preprocess_dataset
from rsna.preprocess.settings import PreprocessParams
from rsna.signals import sigterm_raises

logger = logging.getLogger("stages.preprocess")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (YAML)")
    parser.add_argument("--manifest", required=True, help="manifest of the series (JSONL)")
    parser.add_argument("--out-dir", required=True, help="folder of the .npy volumes")
    parser.add_argument("--index", required=True, help="volumes index to write (JSONL)")
    parser.add_argument(
        "--state", required=True, help="incremental state to read and write (JSONL)"
    )
    parser.add_argument("--rejects", required=True, help="rejected series to write (JSONL)")
    args = parser.parse_args(argv)
    configure_logging()

    data_root = Path(load_section(args.params, "data")["root"])
    params = section_to_dataclass(
        PreprocessParams, load_section(args.params, "preprocess"), section="preprocess"
    )
    jobs = jobs_from_manifest(read_jsonl(args.manifest), data_root=data_root)
    with sigterm_raises():
        summary = preprocess_dataset(
            jobs,
            out_dir=Path(args.out_dir),
            index_path=Path(args.index),
            state_path=Path(args.state),
            rejects_path=Path(args.rejects),
            spec=params.volume_spec(),
            workers=params.workers,
            threads_per_worker=params.threads_per_worker,
        )
    if not summary.records:
        logger.error("no series could be preprocessed; the reasons are in %s", args.rejects)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
