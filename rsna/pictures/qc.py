"""Quality-control pictures: MIPs of a random sample of preprocessed volumes.

The sample is drawn from ``data/volumes_index.jsonl`` (one record per saved volume, with
``SeriesInstanceUID``, ``file``, ``spacing_mm``, ``Modality`` and ``localizers_zyx``),
restricted to one split of ``data/splits.csv`` or taken from all series. The same index,
splits, count and seed always give the same series. Each picture is named
``<SeriesInstanceUID>.png``.
"""

import csv
import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rsna import fileio
from rsna.logs import progress_disabled
from rsna.pictures.mip import DEFAULT_SLAB_MM, parse_localizers, render_mip_png
from rsna.uid import validate_uid

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test", "all")


def read_split_of_series(splits_csv: str | os.PathLike) -> dict[str, str]:
    """Return ``{SeriesInstanceUID: split}`` from ``data/splits.csv``."""
    with open(splits_csv, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"SeriesInstanceUID", "split"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"{splits_csv} lacks columns {sorted(missing)}; found {reader.fieldnames}. "
                "Rerun the split stage."
            )
        return {row["SeriesInstanceUID"]: row["split"] for row in reader}


def select_series(
    records: Sequence[Mapping],
    *,
    split_of_series: Mapping[str, str],
    split: str,
    count: int,
    seed: int,
) -> list[Mapping]:
    """Draw ``count`` index records at random from one split, sorted by UID.

    ``split`` is ``train``, ``val``, ``test`` or ``all``. Fewer than ``count`` records come
    back when the split has fewer series. The draw depends only on the set of UIDs in the
    split, ``count`` and ``seed``, not on the order of ``records``.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is invalid; valid values: {list(SPLITS)}")
    if count < 1:
        raise ValueError(f"count {count} is invalid; expected an integer >= 1")

    candidates = sorted(
        (
            r
            for r in records
            if split == "all" or split_of_series.get(r["SeriesInstanceUID"]) == split
        ),
        key=lambda record: record["SeriesInstanceUID"],
    )
    chosen = random.Random(seed).sample(candidates, min(count, len(candidates)))
    return sorted(chosen, key=lambda record: record["SeriesInstanceUID"])


def render_record(
    record: Mapping, *, volumes_dir: str | os.PathLike, destination: Path, slab_mm: float
) -> None:
    """Write the MIP picture of one volumes-index record to ``destination``.

    Raises OSError or ValueError naming the series when its volume cannot be read or does
    not match the index.
    """
    uid = record["SeriesInstanceUID"]
    path = Path(volumes_dir) / record["file"]
    volume = np.load(path, mmap_mode="r", allow_pickle=False)
    expected_shape = tuple(record.get("shape") or volume.shape)
    if volume.shape != expected_shape:
        raise ValueError(
            f"series {uid}: volume {path} has shape {volume.shape} but the index records "
            f"{expected_shape}; rerun the preprocess stage"
        )

    render_mip_png(
        volume,
        spacing_mm=record["spacing_mm"],
        series_uid=uid,
        modality=str(record.get("Modality") or "unknown modality"),
        localizers=parse_localizers(record.get("localizers_zyx") or []),
        destination=destination,
        slab_mm=slab_mm,
    )


def write_qc_pictures(
    *,
    index_path: str | os.PathLike,
    volumes_dir: str | os.PathLike,
    splits_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    count: int,
    seed: int,
    split: str,
    slab_mm: float = DEFAULT_SLAB_MM,
) -> list[Path]:
    """Write MIP pictures of a random sample of preprocessed series into ``out_dir``.

    ``slab_mm`` is the thickness of the slab MIPs in the second row of each picture (see
    :func:`rsna.pictures.mip.draw_mip_figure`).

    A series whose volume is missing or unreadable is skipped with a warning. PNG files in
    ``out_dir`` left from an earlier sample are removed, so the folder contains exactly this
    sample. Returns the written paths; raises RuntimeError when none could be written.
    """
    records = fileio.read_jsonl(index_path)
    chosen = select_series(
        records,
        split_of_series=read_split_of_series(splits_path),
        split=split,
        count=count,
        seed=seed,
    )
    if not chosen:
        raise RuntimeError(
            f"no series of split {split!r} in {index_path}; check {splits_path} or set "
            "pictures.split to all"
        )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = _render_all(chosen, volumes_dir=volumes_dir, out_dir=out_dir, slab_mm=slab_mm)
    _remove_other_pictures(out_dir, keep=written)
    if not written:
        raise RuntimeError(
            f"none of the {len(chosen)} sampled series could be drawn; see the warnings above"
        )
    logger.info("wrote %d of %d QC pictures to %s", len(written), len(chosen), out_dir)
    return written


def _render_all(
    chosen: Sequence[Mapping], *, volumes_dir: str | os.PathLike, out_dir: Path, slab_mm: float
) -> list[Path]:
    written = []
    progress = tqdm(chosen, desc="QC pictures", unit="series", disable=progress_disabled())
    for record in progress:
        uid = record.get("SeriesInstanceUID")
        try:
            destination = out_dir / f"{validate_uid(uid)}.png"
            render_record(record, volumes_dir=volumes_dir, destination=destination, slab_mm=slab_mm)
        # InvalidUIDError is a ValueError.
        except (OSError, ValueError, KeyError) as error:
            logger.warning("series %s: skipped QC picture: %s", uid, error)
            continue
        written.append(destination)
    return written


def _remove_other_pictures(out_dir: Path, *, keep: Sequence[Path]) -> None:
    keep_names = {path.name for path in keep}
    for path in out_dir.glob("*.png"):
        if path.name not in keep_names:
            path.unlink()
            logger.info("removed %s, which is not in the current sample", path)
