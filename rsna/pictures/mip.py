"""Maximum intensity projections (MIPs) of a preprocessed volume, drawn as one PNG.

The input is a volume in the project's canonical LPS orientation: a ``(z, y, x)`` array in
[0, 1] where ``z`` increases toward the head (superior), ``y`` toward the back (posterior)
and ``x`` toward the patient's left. Each view is the maximum over one axis, arranged for
display as radiologists read it (row 0 at the top of the image):

- axial, shape ``(y, x)``: anterior at the top, the patient's left on the image's right;
- coronal, shape ``(z, x)``: superior at the top, the patient's left on the image's right;
- sagittal, shape ``(z, y)``: superior at the top, anterior on the left.

Each panel is scaled by its voxel spacing, so 1 mm is the same length in both directions,
and carries the orientation letters at its edges (A/P, S/I, R/L).

The first row projects the whole volume. In CT the skull, clipped to the top of the
intensity window, covers most of a whole-volume MIP, so a second row projects slabs of
about ``slab_mm`` through the first localizer (or the volume centre), where vessels show.
"""

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rsna import fileio

logger = logging.getLogger(__name__)

VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")

# Letters at the (top, bottom, left, right) edges of each view, in the patient's terms.
ORIENTATION_LETTERS: dict[str, tuple[str, str, str, str]] = {
    "axial": ("A", "P", "R", "L"),
    "coronal": ("S", "I", "R", "L"),
    "sagittal": ("S", "I", "A", "P"),
}

# A dark page, as on a reading-room monitor, so faint vessels stand out.
BACKGROUND_COLOR = "black"
TEXT_COLOR = "white"
FIGURE_WIDTH_INCHES = 12.0
DEFAULT_DPI = 100
# Thick enough to follow a vessel segment, thin enough to leave out most of the skull.
DEFAULT_SLAB_MM = 20.0
# Hollow markers, so the voxel under a localizer stays visible.
MARKER_SIZE_POINTS = 16.0
MARKER_COLORS: tuple[str, ...] = (
    "#ff3b30",
    "#34c759",
    "#0a84ff",
    "#ffcc00",
    "#ff2dd1",
    "#5ac8fa",
    "#ff9500",
)


@dataclass(frozen=True)
class Localizer:
    """A labelled point in voxel coordinates ``(z, y, x)`` of the volume, as floats."""

    z: float
    y: float
    x: float
    location: str


def project_views(
    volume: np.ndarray, *, slab: Sequence[tuple[int, int]] | None = None
) -> dict[str, np.ndarray]:
    """Return the axial, coronal and sagittal MIPs of ``volume``, oriented for display.

    ``volume`` is ``(z, y, x)`` in canonical LPS. The results are float32 arrays with row 0
    at the top of the image: axial ``(y, x)``, coronal ``(z, x)`` and sagittal ``(z, y)``,
    where the last two have ``z`` reversed so that superior is at the top. With ``slab``,
    ``[start, stop)`` voxel ranges along z, y and x, each view projects only its range
    along the projected axis (z for axial, y for coronal, x for sagittal). NaN voxels are
    ignored; a line of NaN voxels only projects to NaN.
    """
    _check_volume_shape(volume)
    voxels = np.asarray(volume, dtype=np.float32)
    (z0, z1), (y0, y1), (x0, x1) = slab or [(0, size) for size in volume.shape]

    axial = _nanmax(voxels[z0:z1], axis=0)
    coronal = _nanmax(voxels[:, y0:y1], axis=1)[::-1]
    sagittal = _nanmax(voxels[:, :, x0:x1], axis=2)[::-1]
    return {"axial": axial, "coronal": coronal, "sagittal": sagittal}


def slab_bounds(
    centre_zyx: Sequence[float],
    *,
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    slab_mm: float,
) -> list[tuple[int, int]]:
    """Return ``[start, stop)`` voxel ranges along z, y and x of slabs centred on a point.

    Each range spans ``round(slab_mm / spacing)`` voxels (at least 1) around
    ``centre_zyx``, with one voxel more after the centre than before it when the count is
    even, shifted to stay inside ``shape``. A volume thinner than the slab gives its whole
    extent.
    """
    bounds = []
    for centre, size, spacing in zip(centre_zyx, shape, spacing_mm, strict=True):
        count = min(max(1, round(slab_mm / float(spacing))), int(size))
        # Round half up, so a slab of even count starts the same way on every axis.
        start = math.floor(float(centre) - (count - 1) / 2 + 0.5)
        start = min(max(start, 0), int(size) - count)
        bounds.append((start, start + count))
    return bounds


def view_pixel(zyx: Sequence[float], *, shape: Sequence[int]) -> dict[str, tuple[float, float]]:
    """Map a voxel position ``(z, y, x)`` to its ``(row, column)`` in each view.

    Rows and columns index the images of :func:`project_views`, and ``shape`` is the
    volume's ``(z, y, x)`` shape. Positions are in voxel units, so a
    fractional localizer maps to a fractional pixel.
    """
    z, y, x = (float(value) for value in zyx)
    z_row = int(shape[0]) - 1 - z
    return {"axial": (y, x), "coronal": (z_row, x), "sagittal": (z_row, y)}


def view_spacing_mm(spacing_mm: Sequence[float]) -> dict[str, tuple[float, float]]:
    """Return each view's ``(row, column)`` pixel spacing in mm from the ``(z, y, x)`` spacing."""
    spacing_z, spacing_y, spacing_x = (float(value) for value in spacing_mm)
    return {
        "axial": (spacing_y, spacing_x),
        "coronal": (spacing_z, spacing_x),
        "sagittal": (spacing_z, spacing_y),
    }


def parse_localizers(records: Sequence[Mapping]) -> list[Localizer]:
    """Convert ``localizers_zyx`` entries of the volumes index to :class:`Localizer` objects.

    Each entry is a mapping with numbers ``z``, ``y``, ``x`` (voxel coordinates) and a
    ``location`` string; anything else raises ValueError naming the entry.
    """
    localizers = []
    for record in records:
        try:
            localizers.append(
                Localizer(
                    z=float(record["z"]),
                    y=float(record["y"]),
                    x=float(record["x"]),
                    location=str(record["location"]),
                )
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"localizer {record!r} is invalid: expected numbers z, y, x and a location "
                f"string ({error}); fix localizers_zyx in the volumes index"
            ) from error
    return localizers


def draw_mip_figure(
    volume: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    series_uid: str,
    modality: str,
    localizers: Sequence[Localizer] = (),
    slab_mm: float = DEFAULT_SLAB_MM,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Draw the MIPs of ``volume`` with localizers marked, as a Figure of two rows.

    ``volume`` is ``(z, y, x)`` in canonical LPS with values in [0, 1] (values outside are
    clipped on display); ``spacing_mm`` is its ``(z, y, x)`` voxel spacing. The first row
    (``figure.axes[0:3]``, in :data:`VIEWS` order) shows whole-volume MIPs, the second
    (``figure.axes[3:6]``) MIPs of ``slab_mm`` slabs through the first localizer inside
    the volume, or through its centre. Localizers outside the volume are left out and
    counted in the title; a slab view marks only the localizers inside its slab.
    """
    _check_spacing(spacing_mm, series_uid=series_uid)
    inside, outside = _split_inside(localizers, shape=volume.shape, series_uid=series_uid)
    centre, centre_name = _slab_centre(inside, shape=volume.shape)
    slab = slab_bounds(centre, shape=volume.shape, spacing_mm=spacing_mm, slab_mm=slab_mm)
    rows = {"MIP": (project_views(volume), None), "slab": (project_views(volume, slab=slab), slab)}
    spacings = view_spacing_mm(spacing_mm)

    figure, axes = _new_figure(rows["MIP"][0], spacings, dpi=dpi)
    colors = _location_colors(inside)
    for row, (views, bounds) in enumerate(rows.values()):
        for ax, view in zip(axes[3 * row : 3 * row + 3], VIEWS, strict=True):
            title = f"{view} MIP" if bounds is None else _slab_title(view, bounds, spacing_mm)
            _draw_view(ax, view, views[view], spacings[view], title=title)
            marked = inside if bounds is None else _inside_slab(inside, view, bounds)
            _mark_localizers(ax, view, marked, colors, shape=volume.shape)

    title = _title(series_uid, modality, spacing_mm, volume.shape, len(outside))
    figure.suptitle(f"{title}\nslabs through {centre_name}", color=TEXT_COLOR, fontsize=11)
    _add_legend(figure, colors)
    return figure


def save_figure_png(figure: Figure, destination: str | os.PathLike) -> None:
    """Render ``figure`` with the Agg backend and write it as PNG atomically.

    The PNG has no text chunk naming the matplotlib version, so its bytes depend only on
    what is drawn and two runs on one installation give identical files.
    """
    FigureCanvasAgg(figure)
    with fileio.atomic_path(destination) as temporary:
        figure.savefig(
            temporary,
            format="png",
            facecolor=figure.get_facecolor(),
            metadata={"Software": None},
        )


def render_mip_png(
    volume: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    series_uid: str,
    modality: str,
    destination: str | os.PathLike,
    localizers: Sequence[Localizer] = (),
    slab_mm: float = DEFAULT_SLAB_MM,
    dpi: int = DEFAULT_DPI,
) -> None:
    """Write the MIP picture of :func:`draw_mip_figure` to ``destination`` as PNG."""
    figure = draw_mip_figure(
        volume,
        spacing_mm=spacing_mm,
        series_uid=series_uid,
        modality=modality,
        localizers=localizers,
        slab_mm=slab_mm,
        dpi=dpi,
    )
    save_figure_png(figure, destination)


def _check_volume_shape(volume: np.ndarray) -> None:
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(
            f"volume of shape {volume.shape} cannot be projected: expected a non-empty "
            "(z, y, x) array with 3 axes"
        )


def _check_spacing(spacing_mm: Sequence[float], *, series_uid: str) -> None:
    values = list(spacing_mm)
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(
            f"series {series_uid}: spacing_mm {values!r} is invalid; expected 3 positive "
            "numbers (z, y, x) in mm, as in the volumes index"
        )


def _nanmax(voxels: np.ndarray, *, axis: int) -> np.ndarray:
    if not np.isnan(voxels).any():
        return voxels.max(axis=axis)
    all_nan = np.isnan(voxels).all(axis=axis)
    projection = np.where(np.isnan(voxels), -np.inf, voxels).max(axis=axis)
    return np.where(all_nan, np.nan, projection).astype(np.float32)


def _split_inside(
    localizers: Sequence[Localizer], *, shape: Sequence[int], series_uid: str
) -> tuple[list[Localizer], list[Localizer]]:
    inside, outside = [], []
    for localizer in localizers:
        position = (localizer.z, localizer.y, localizer.x)
        if all(-0.5 <= value <= size - 0.5 for value, size in zip(position, shape, strict=True)):
            inside.append(localizer)
        else:
            outside.append(localizer)
            logger.warning(
                "series %s: localizer %s at (z, y, x) = %s lies outside the volume of shape %s; "
                "it is not marked",
                series_uid,
                localizer.location,
                position,
                tuple(shape),
            )
    return inside, outside


def _slab_centre(
    localizers: Sequence[Localizer], *, shape: Sequence[int]
) -> tuple[tuple[float, float, float], str]:
    if localizers:
        first = localizers[0]
        return (first.z, first.y, first.x), first.location
    centre = tuple((int(size) - 1) / 2 for size in shape)
    return centre, "the volume centre"


def _inside_slab(
    localizers: Sequence[Localizer], view: str, bounds: Sequence[tuple[int, int]]
) -> list[Localizer]:
    axis = VIEWS.index(view)
    start, stop = bounds[axis]
    return [
        localizer
        for localizer in localizers
        if start - 0.5 <= (localizer.z, localizer.y, localizer.x)[axis] < stop - 0.5
    ]


def _slab_title(view: str, bounds: Sequence[tuple[int, int]], spacing_mm: Sequence[float]) -> str:
    axis = VIEWS.index(view)
    start, stop = bounds[axis]
    thickness_mm = (stop - start) * float(spacing_mm[axis])
    return f"{view} slab, {thickness_mm:g} mm ({'zyx'[axis]} {start}-{stop - 1})"


def _new_figure(
    views: Mapping[str, np.ndarray],
    spacings: Mapping[str, tuple[float, float]],
    *,
    dpi: int,
) -> tuple[Figure, list[Axes]]:
    widths_mm = [views[v].shape[1] * spacings[v][1] for v in VIEWS]
    heights_mm = [views[v].shape[0] * spacings[v][0] for v in VIEWS]
    panel_height = FIGURE_WIDTH_INCHES * max(heights_mm) / sum(widths_mm)
    # Room above for the three-line title, between the rows for panel titles and below
    # for the localizer legend.
    figure = Figure(
        figsize=(FIGURE_WIDTH_INCHES, 2 * panel_height + 2.2),
        dpi=dpi,
        facecolor=BACKGROUND_COLOR,
    )
    axes = figure.subplots(
        2, 3, gridspec_kw={"width_ratios": widths_mm, "wspace": 0.08, "hspace": 0.12}
    )
    figure.subplots_adjust(
        left=0.02,
        right=0.98,
        top=1 - 1.1 / figure.get_figheight(),
        bottom=0.6 / figure.get_figheight(),
    )
    return figure, list(axes.ravel())


def _draw_view(
    ax: Axes, view: str, image: np.ndarray, spacing: tuple[float, float], *, title: str
) -> None:
    ax.imshow(
        image,
        cmap="gray",
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
        origin="upper",
        aspect=spacing[0] / spacing[1],
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor(BACKGROUND_COLOR)
    for spine in ax.spines.values():
        spine.set_color("#555555")
    ax.set_title(title, color=TEXT_COLOR, fontsize=9)

    top, bottom, left, right = ORIENTATION_LETTERS[view]
    style = {"color": "#ffd60a", "fontsize": 10, "fontweight": "bold", "transform": ax.transAxes}
    ax.text(0.5, 0.99, top, ha="center", va="top", **style)
    ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)
    ax.text(0.01, 0.5, left, ha="left", va="center", **style)
    ax.text(0.99, 0.5, right, ha="right", va="center", **style)


def _location_colors(localizers: Sequence[Localizer]) -> dict[str, str]:
    locations = sorted({localizer.location for localizer in localizers})
    return {name: MARKER_COLORS[i % len(MARKER_COLORS)] for i, name in enumerate(locations)}


def _mark_localizers(
    ax: Axes,
    view: str,
    localizers: Sequence[Localizer],
    colors: Mapping[str, str],
    *,
    shape: Sequence[int],
) -> None:
    for localizer in localizers:
        row, column = view_pixel((localizer.z, localizer.y, localizer.x), shape=shape)[view]
        ax.plot(
            column,
            row,
            marker="o",
            markersize=MARKER_SIZE_POINTS,
            markerfacecolor="none",
            markeredgecolor=colors[localizer.location],
            markeredgewidth=1.8,
            linestyle="none",
            label=localizer.location,
        )


def _title(
    series_uid: str,
    modality: str,
    spacing_mm: Sequence[float],
    shape: Sequence[int],
    outside_count: int,
) -> str:
    spacing_text = " × ".join(f"{float(value):g}" for value in spacing_mm)
    shape_text = " × ".join(str(int(value)) for value in shape)
    details = f"{modality}   spacing (z, y, x) {spacing_text} mm   shape {shape_text}"
    if outside_count:
        details += f"   {outside_count} localizer(s) outside the volume"
    return f"{series_uid}\n{details}"


def _add_legend(figure: Figure, colors: Mapping[str, str]) -> None:
    if not colors:
        return
    handles = [
        Line2D([], [], marker="o", markerfacecolor="none", markeredgecolor=color, linestyle="none")
        for color in colors.values()
    ]
    legend = figure.legend(
        handles,
        list(colors),
        loc="lower center",
        ncol=min(len(colors), 4),
        frameon=False,
        fontsize=9,
    )
    for text in legend.get_texts():
        text.set_color(TEXT_COLOR)
