"""Training curves, ROC curves and cross-validation scores as PNG images.

``dvc plots show`` draws CSV plots with Vega-Lite scripts that its page loads from a
CDN, so they stay blank on a machine without internet access. These functions draw the
same data with matplotlib, and the PNGs, declared as image plots, show offline.

The inputs are the pipeline's plot files. ``history.csv`` of the train stage has the
columns epoch, train_loss, val_loss, val_score and lr. ``roc.csv`` of the evaluate stage has
the columns label, fpr and tpr, with one row per point of each label's ROC curve.
"""

import logging
import math
import os
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rsna.labels import ANEURYSM_PRESENT, LABEL_COLUMNS
from rsna.pictures.mip import save_figure_png

logger = logging.getLogger(__name__)

HISTORY_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_loss", "val_score", "lr")
ROC_COLUMNS: tuple[str, ...] = ("label", "fpr", "tpr")
DEFAULT_DPI = 100
ROC_GRID_COLUMNS = 4
# Characters per line of a panel title; the longest label name needs two lines.
ROC_TITLE_WIDTH = 30


def read_history(path: str | os.PathLike) -> pd.DataFrame:
    """Read a training history CSV, sorted by epoch; empty cells become NaN.

    Raises ValueError naming the file when a column of :data:`HISTORY_COLUMNS` is missing or
    the file has no rows.
    """
    history = _read_csv(path, HISTORY_COLUMNS)
    history = history.apply(pd.to_numeric, errors="coerce")
    if history["epoch"].isna().any():
        raise ValueError(f"{path}: column epoch has empty or non-numeric values; expected integers")
    return history.sort_values("epoch", kind="stable").reset_index(drop=True)


def read_roc(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read an ROC CSV into ``{label: (fpr, tpr)}``, points sorted by fpr then tpr.

    Labels keep the order of :data:`rsna.labels.LABEL_COLUMNS`; a file with a header and no
    rows gives an empty mapping. A label name outside that
    list, or an fpr or tpr outside [0, 1], raises ValueError naming the file.
    """
    # No rows is valid: every label had a single class in the evaluated split.
    table = _read_csv(path, ROC_COLUMNS, allow_empty=True)
    unknown = sorted(set(table["label"]) - set(LABEL_COLUMNS))
    if unknown:
        raise ValueError(
            f"{path}: unknown labels {unknown}; expected names of rsna.labels.LABEL_COLUMNS"
        )
    rates = table[["fpr", "tpr"]].apply(pd.to_numeric, errors="coerce")
    if rates.isna().any().any() or not rates.stack().between(0.0, 1.0).all():
        raise ValueError(f"{path}: fpr and tpr must be numbers in [0, 1]")

    curves = {}
    for label in LABEL_COLUMNS:
        rows = rates[table["label"] == label]
        if rows.empty:
            continue
        order = np.lexsort((rows["tpr"].to_numpy(), rows["fpr"].to_numpy()))
        curves[label] = (rows["fpr"].to_numpy()[order], rows["tpr"].to_numpy()[order])
    return curves


def area_under_curve(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Return the trapezoidal area under an ROC curve given by points sorted by fpr.

    For the full curve of a scorer (all thresholds) this equals the AUROC.
    """
    return float(np.trapezoid(tpr, fpr))


def plot_training_history(
    *, history_csv: str | os.PathLike, destination: str | os.PathLike, dpi: int = DEFAULT_DPI
) -> None:
    """Draw loss, validation score and learning rate per epoch into one PNG.

    Three panels side by side: train and validation loss, validation challenge score (a
    gap where it was undefined), and learning rate on a log scale when every value is
    positive.
    """
    history = read_history(history_csv)
    figure = Figure(figsize=(12.0, 3.6), dpi=dpi, layout="constrained")
    loss_ax, score_ax, lr_ax = figure.subplots(1, 3)

    _plot_series(loss_ax, history, ("train_loss", "val_loss"), title="Loss (BCE)")
    _plot_series(score_ax, history, ("val_score",), title="Validation challenge score")
    _plot_series(lr_ax, history, ("lr",), title="Learning rate")
    if (history["lr"].dropna() > 0).all() and history["lr"].notna().any():
        lr_ax.set_yscale("log")
    _annotate_best_score(score_ax, history)

    figure.suptitle(f"Training history: {len(history)} epochs")
    save_figure_png(figure, destination)
    logger.info("wrote training curves of %d epochs to %s", len(history), destination)


def plot_roc_curves(
    *,
    roc_csv: str | os.PathLike,
    destination: str | os.PathLike,
    title: str = "ROC curve per label",
    dpi: int = DEFAULT_DPI,
) -> None:
    """Draw one small ROC panel per label (14 panels) into one PNG, with each AUROC.

    A label with no rows in ``roc_csv`` (a single class in the evaluated split) gets an
    empty panel with that note.
    """
    curves = read_roc(roc_csv)
    rows = math.ceil(len(LABEL_COLUMNS) / ROC_GRID_COLUMNS)
    figure = Figure(figsize=(3.0 * ROC_GRID_COLUMNS, 2.9 * rows), dpi=dpi, layout="constrained")
    axes = figure.subplots(rows, ROC_GRID_COLUMNS).ravel()

    for ax, label in zip(axes, LABEL_COLUMNS, strict=False):
        _draw_roc_panel(ax, label, curves.get(label))
    for ax in axes[len(LABEL_COLUMNS) :]:
        ax.set_axis_off()

    figure.suptitle(title)
    save_figure_png(figure, destination)
    logger.info(
        "wrote ROC curves of %d of %d labels to %s", len(curves), len(LABEL_COLUMNS), destination
    )


def plot_fold_scores(
    *,
    fold_scores: Mapping[int, float | None],
    score_mean: float | None,
    score_std: float | None,
    destination: str | os.PathLike,
    fold_histories: Mapping[int, pd.DataFrame] | None = None,
    dpi: int = DEFAULT_DPI,
) -> None:
    """Draw cross-validation results into one PNG: a bar per fold and their mean ± std.

    ``fold_scores`` maps each fold to its challenge score on its held-out fold (None when
    undefined, drawn as a missing bar); ``score_mean`` and ``score_std`` come from
    :func:`rsna.cross_validation.summarize`. With ``fold_histories`` (frames of
    :func:`read_history`), a second panel shows each fold's validation score per epoch.
    """
    panels = 2 if fold_histories else 1
    figure = Figure(figsize=(6.0 * panels, 3.6), dpi=dpi, layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, panels))

    _draw_fold_bars(axes[0], fold_scores, score_mean, score_std)
    if fold_histories:
        for fold, history in sorted(fold_histories.items()):
            axes[1].plot(history["epoch"], history["val_score"], marker=".", label=f"fold {fold}")
        _style_axes(axes[1], title="Validation score per epoch", xlabel="epoch")
        axes[1].legend(fontsize=8)

    figure.suptitle(f"Cross-validation: {len(fold_scores)} folds")
    save_figure_png(figure, destination)


def _read_csv(
    path: str | os.PathLike, columns: Sequence[str], *, allow_empty: bool = False
) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"plot data {path} not found; run the stage that writes it"
        ) from error
    except pd.errors.EmptyDataError as error:
        raise ValueError(
            f"{path} is empty; expected a header with columns {list(columns)}"
        ) from error

    missing = [name for name in columns if name not in table.columns]
    if missing:
        raise ValueError(
            f"{path} lacks columns {missing}; found {list(table.columns)}, expected {list(columns)}"
        )
    if table.empty and not allow_empty:
        raise ValueError(f"{path} has a header but no rows")
    return table[list(columns)]


def _plot_series(ax: Axes, history: pd.DataFrame, columns: Sequence[str], *, title: str) -> None:
    for column in columns:
        ax.plot(history["epoch"], history[column], marker=".", label=column)
    _style_axes(ax, title=title, xlabel="epoch")
    if len(columns) > 1:
        ax.legend()


def _annotate_best_score(ax: Axes, history: pd.DataFrame) -> None:
    scores = history["val_score"]
    if scores.notna().any():
        best = scores.idxmax()
        epoch, score = history.loc[best, "epoch"], scores[best]
        ax.scatter([epoch], [score], s=80, facecolors="none", edgecolors="tab:red", zorder=3)
        ax.text(
            0.98,
            0.03,
            f"best {score:.4f} at epoch {epoch:g}",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            color="tab:red",
        )


def _draw_roc_panel(ax: Axes, label: str, curve: tuple[np.ndarray, np.ndarray] | None) -> None:
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    weight = " (weight 13)" if label == ANEURYSM_PRESENT else ""
    if curve is None:
        ax.text(
            0.5,
            0.5,
            "no ROC data\n(a single class\nin the split)",
            ha="center",
            va="center",
            fontsize=9,
        )
        ax.set_title(textwrap.fill(label + weight, ROC_TITLE_WIDTH), fontsize=9)
    else:
        fpr, tpr = curve
        ax.plot(fpr, tpr, color="tab:blue", linewidth=1.6)
        ax.set_title(
            textwrap.fill(f"{label}{weight}", ROC_TITLE_WIDTH)
            + f"\nAUC {area_under_curve(fpr, tpr):.3f}",
            fontsize=9,
        )
    ax.set_xlabel("false positive rate", fontsize=8)
    ax.set_ylabel("true positive rate", fontsize=8)
    ax.tick_params(labelsize=7)


def _draw_fold_bars(
    ax: Axes,
    fold_scores: Mapping[int, float | None],
    score_mean: float | None,
    score_std: float | None,
) -> None:
    folds = sorted(fold_scores)
    heights = [fold_scores[fold] if fold_scores[fold] is not None else 0.0 for fold in folds]
    bars = ax.bar([str(fold) for fold in folds], heights, color="tab:blue")
    labels = [
        f"{fold_scores[fold]:.3f}" if fold_scores[fold] is not None else "undefined"
        for fold in folds
    ]
    ax.bar_label(bars, labels=labels, label_type="edge", padding=2, fontsize=8)
    if score_mean is not None:
        spread = score_std or 0.0
        std_text = f"{score_std:.4f}" if score_std is not None else "undefined"
        ax.axhline(score_mean, color="tab:red", label=f"mean {score_mean:.4f}, std {std_text}")
        ax.axhspan(score_mean - spread, score_mean + spread, color="tab:red", alpha=0.15)
        ax.legend(loc="lower right", fontsize=8)
    ax.set_ylim(0, 1)
    _style_axes(ax, title="Challenge score on each held-out fold", xlabel="fold")


def _style_axes(ax: Axes, *, title: str, xlabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(True, alpha=0.3)
