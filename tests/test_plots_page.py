"""The page of `dvc plots show`, opened in headless Chromium as a user would open it offline.

A temporary DVC repository declares a MIP picture and the curve PNGs as image plots, plus a
CSV plot that DVC draws with Vega-Lite. `dvc plots show` writes the page; Chromium renders it
to a screenshot with every host name unresolvable, as on a machine without internet, so the
CDN scripts of the Vega-Lite chart fail to load while the PNG images must still show.
"""

import csv
import os
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from scipy import ndimage

from rsna.labels import ANEURYSM_PRESENT, LABEL_COLUMNS
from rsna.pictures.curves import plot_roc_curves, plot_training_history
from rsna.pictures.mip import Localizer, render_mip_png

CHROMIUM = shutil.which("chromium")
UID = "1.2.826.0.1.3680043.8.498.77"
CHROMIUM_TIMEOUT_S = 120

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed; on Debian: "
        "apt-get install -y --no-install-recommends chromium",
    ),
]

DVC_YAML = """\
plots:
  - plots/images/qc
  - plots/images/curves
  - plots/train/history.csv:
      x: epoch
      y: [train_loss, val_loss]
"""


class _ImageSources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")


def _synthetic_volume() -> np.ndarray:
    """A (32, 64, 64) volume with a vessel along x and a bright blob toward the patient's left."""
    volume = np.zeros((32, 64, 64), dtype=np.float16)
    volume[16, 30:33, 8:56] = 0.7
    volume[20:23, 20:23, 44:47] = 1.0
    return volume


def _write_plot_files(repo: Path) -> dict[str, Path]:
    qc = repo / "plots" / "images" / "qc" / f"{UID}.png"
    render_mip_png(
        _synthetic_volume(),
        spacing_mm=(2.0, 1.0, 1.0),
        series_uid=UID,
        modality="CTA",
        localizers=[Localizer(z=21, y=21, x=45, location="Left Middle Cerebral Artery")],
        destination=qc,
    )

    history = repo / "plots" / "train" / "history.csv"
    history.parent.mkdir(parents=True)
    with open(history, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "train_loss", "val_loss", "val_score", "lr"])
        writer.writerows([e, 1 / e, 1.1 / e, 0.5 + e / 20, 1e-3 / e] for e in range(1, 6))
    roc = repo / "plots" / "evaluate" / "roc.csv"
    roc.parent.mkdir(parents=True)
    with open(roc, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "fpr", "tpr"])
        for label in LABEL_COLUMNS:
            writer.writerows([(label, 0.0, 0.0), (label, 0.2, 0.8), (label, 1.0, 1.0)])

    curves = repo / "plots" / "images" / "curves"
    plot_training_history(history_csv=history, destination=curves / "training.png")
    plot_roc_curves(roc_csv=roc, destination=curves / "roc.png", title=f"ROC, {ANEURYSM_PRESENT}")
    return {"qc": qc, "training": curves / "training.png", "roc": curves / "roc.png"}


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _write_page(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"
    assert _run(["git", "init", "-q"], repo).returncode == 0
    assert _run([dvc, "init", "-q"], repo).returncode == 0
    assert _run([dvc, "config", "core.analytics", "false"], repo).returncode == 0
    (repo / "dvc.yaml").write_text(DVC_YAML)
    sources = _write_plot_files(repo)

    result = _run([dvc, "plots", "show", "-o", "page"], repo)
    assert result.returncode == 0, result.stderr
    return repo / "page" / "index.html", sources


def _screenshot(page: Path, destination: Path, *, profile: Path, width: int, height: int) -> None:
    """Render ``page`` with headless Chromium into a PNG of ``width`` x ``height`` pixels."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        # No host name resolves and no proxy is reachable, so the page's CDN requests fail
        # at once and nothing leaves the machine.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={width},{height}",
        f"--screenshot={destination}",
        page.as_uri(),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s")
    assert destination.is_file(), output.decode(errors="replace")[-2000:]


def _largest_dark_box(screenshot: np.ndarray) -> tuple[int, int]:
    """Return the top-left corner of the largest connected area of near-black pixels."""
    dark = np.all(screenshot[..., :3] < 0.1, axis=2)
    labels, count = ndimage.label(dark)
    assert count > 0, "no dark area in the screenshot: the MIP picture is not shown"
    sizes = ndimage.sum_labels(dark, labels, index=np.arange(1, count + 1))
    rows, columns = ndimage.find_objects(labels)[int(np.argmax(sizes))]
    return rows.start, columns.start


def _best_match(screenshot: np.ndarray, picture: np.ndarray, near: tuple[int, int]) -> tuple:
    """Find where ``picture`` appears in ``screenshot`` within 3 pixels of ``near``.

    Returns the shown pixels and their mean absolute difference to ``picture``. The dark
    area can include a pixel of the page's frame around the image, hence the search.
    """
    height, width = picture.shape[:2]
    best = (None, np.inf)
    for row in range(max(near[0] - 3, 0), near[0] + 4):
        for column in range(max(near[1] - 3, 0), near[1] + 4):
            region = screenshot[row : row + height, column : column + width]
            if region.shape != picture.shape:
                continue
            difference = float(np.abs(region - picture).mean())
            if difference < best[1]:
                best = (region, difference)
    return best


def test_page_references_every_image(tmp_path):
    page, sources = _write_page(tmp_path)
    parser = _ImageSources()
    parser.feed(page.read_text(encoding="utf-8"))

    image_files = {src: page.parent / src for src in parser.sources}

    assert len(image_files) == len(sources)
    for name, source in sources.items():
        matches = [path for src, path in image_files.items() if src.endswith(source.name)]
        assert len(matches) == 1, f"{name}: no img tag for {source.name} in {sorted(image_files)}"
        assert matches[0].read_bytes() == source.read_bytes(), name


def test_screenshot_shows_mip_and_curves(tmp_path):
    page, sources = _write_page(tmp_path)
    heights = [imread(path).shape[0] for path in sources.values()]
    # Room for every image plus DVC's headings and frames around each.
    height = sum(heights) + 200 * len(heights) + 200
    screenshot_path = tmp_path / "screenshot.png"

    _screenshot(page, screenshot_path, profile=tmp_path / "profile", width=1400, height=height)
    screenshot = imread(screenshot_path)[..., :3]
    mip = imread(sources["qc"])[..., :3]

    assert screenshot.std() > 0.1, "the screenshot is blank"
    mip_on_page, difference = _best_match(screenshot, mip, _largest_dark_box(screenshot))
    assert mip_on_page is not None, "the MIP picture is not shown at its own size"
    assert difference < 0.01, "the MIP on the page differs from the PNG file"
    bright_on_page = np.all(mip_on_page > 0.9, axis=2).sum()
    assert bright_on_page > 100, "the MIP region has no bright voxels"
    assert bright_on_page >= 0.95 * np.all(mip > 0.9, axis=2).sum()
