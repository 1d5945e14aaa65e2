"""Pictures for the evaluation report (matplotlib, Agg, no pyplot global state).

Montages are drawn in the canonical orientation (axial slices with anterior up, coronal and sagittal with
superior up) and in millimetres, so thick-slice scans keep their true proportions.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from seg3d.atomic import write_with_atomic
from seg3d.io.image import SUPPORTED_ENDINGS, Geometry, Reorientation, read_image

# matplotlib imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast

REF_COLOUR, PRED_COLOUR = "#00e000", "#ff00ff"
MONTAGE_SIZE_IN, DPI = (12.0, 4.5), 100


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    write_with_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def find_case_image(images_dir: str | Path, case_id: str) -> Path | None:
    """Channel 0 of a case in an image folder: ``<case>_0000<ending>``, else ``<case><ending>``."""
    folder = Path(images_dir)
    for stem in (f"{case_id}_0000", case_id):
        for e in SUPPORTED_ENDINGS:
            if (folder / f"{stem}{e}").is_file():
                return folder / f"{stem}{e}"
    return None


def _window(img: np.ndarray) -> tuple[float, float]:
    sample = img.ravel()[:: max(1, img.size // 200_000)]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def _centre(ref: np.ndarray, pred: np.ndarray) -> tuple[int, ...]:
    for mask in (ref > 0, pred > 0):
        if mask.any():
            return tuple(round(float(c.mean())) for c in np.nonzero(mask))
    return tuple(s // 2 for s in ref.shape)


def montage(image: np.ndarray, ref: np.ndarray, pred: np.ndarray, spacing_zyx, class_values, out_path: Path,
            title: str = "") -> None:
    """Axial, coronal and sagittal slices through the reference's centre of mass, with contours."""
    from matplotlib.lines import Line2D

    sz, sy, sx = (float(s) for s in spacing_zyx)
    nz, ny, nx = ref.shape
    cz, cy, cx = _centre(ref, pred)
    lo, hi = _window(image)
    views = [  # (name, slicer, extent in mm, origin)
        ("axial", (cz, slice(None), slice(None)), (0, nx * sx, ny * sy, 0), "upper"),
        ("coronal", (slice(None), cy, slice(None)), (0, nx * sx, 0, nz * sz), "lower"),
        ("sagittal", (slice(None), slice(None), cx), (0, ny * sy, 0, nz * sz), "lower"),
    ]
    fig = _figure(MONTAGE_SIZE_IN)
    axes = fig.subplots(1, 3)
    for ax, (name, sl, extent, origin) in zip(axes, views):
        ax.imshow(image[sl], cmap="gray", vmin=lo, vmax=hi, extent=extent, origin=origin,
                  interpolation="nearest", aspect="equal")
        r2, p2 = ref[sl], pred[sl]
        for v in class_values:
            for lab, colour, style in ((r2, REF_COLOUR, "solid"), (p2, PRED_COLOUR, "dashed")):
                mask = lab == v
                if mask.any() and not mask.all():
                    ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linestyles=style,
                               linewidths=1.2, extent=extent, origin=origin)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=REF_COLOUR, lw=1.5, ls="solid", label="reference"),
               Line2D([], [], color=PRED_COLOUR, lw=1.5, ls="dashed", label="prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.1, wspace=0.05)
    _save(fig, out_path)


def _canonical(ref_img, *arrays):

    ro = Reorientation.to_canonical(ref_img.geometry)
    return ro.geometry(ref_img.geometry).spacing_zyx, [np.asarray(ro.apply(a)) for a in arrays]


def case_pictures(summary: dict, case_ids: list[str], pic_dir: Path, images_dir=None,
                  relative_to: Path | None = None) -> dict[str, str]:
    """One montage per case id; returns ``case_id -> path`` (relative to ``relative_to`` when given)."""
    by_id = {c["case_id"]: c for c in summary["cases"]}
    class_values = [v for v in summary["labels"].values() if v != 0] if "labels" in summary else None
    out = {}
    for cid in case_ids:
        case = by_id[cid]
        ref, pred = read_image(case["reference"]), read_image(case["prediction"])
        if ref.array.ndim != 3:
            continue  # montages are for 3D images
        image = ref.array.astype(np.float32)
        note = ""
        img_path = find_case_image(images_dir, cid) if images_dir else None
        if img_path is not None:
            img = read_image(img_path)
            arr = img.array[0] if img.array.ndim == 4 else img.array
            if arr.shape == ref.array.shape and _same_grid(img.geometry, ref.geometry):
                image = arr.astype(np.float32)
            else:
                note = " (image not on the label grid: showing the reference)"
        spacing, (image, r, p) = _canonical(ref, image, ref.array, pred.array)
        values = class_values if class_values is not None else sorted(set(np.unique(r)) - {0})
        dice = case.get("foreground_dice")
        dtxt = "–" if dice is None or (isinstance(dice, float) and math.isnan(dice)) else f"{dice:.3f}"
        path = pic_dir / f"{_safe_name(cid)}.png"
        montage(image, r, p, spacing, values, path, title=f"{cid}: foreground Dice {dtxt}{note}")
        out[cid] = os.path.relpath(path, relative_to) if relative_to else str(path)
    return out


def _same_grid(img_geo, ref_geo) -> bool:
    """Image (3D, or 4D with channels last in SimpleITK order) on the label's grid."""

    if img_geo.dim == 4:
        m = np.asarray(img_geo.direction).reshape(4, 4)[:3, :3]
        img_geo = Geometry(img_geo.size[:3], img_geo.spacing[:3], img_geo.origin[:3],
                           tuple(float(v) for v in m.ravel()))
    return not ref_geo.mismatches(img_geo)


def _safe_name(case_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in case_id)


def dice_boxplot(summary: dict, out_path: Path) -> None:
    """Dice per class across cases (defined values only), with the individual cases as dots."""
    names = list(summary["per_class"])
    data = [np.array([c["classes"][n]["dice"] for c in summary["cases"]], dtype=float) for n in names]
    data = [d[~np.isnan(d)] for d in data]
    width = min(max(6.0, 0.45 * len(names) + 2.0), 40.0)
    fig = _figure((width, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    pos = np.arange(1, len(names) + 1)
    keep = [i for i, d in enumerate(data) if d.size]
    if keep:
        ax.boxplot([data[i] for i in keep], positions=pos[keep], widths=0.6, showfliers=False)
        rng = np.random.default_rng(0)
        for i in keep:
            ax.scatter(pos[i] + rng.uniform(-0.15, 0.15, data[i].size), data[i], s=8, alpha=0.6, color="C0")
    ax.set_xticks(pos)
    ax.set_xticklabels(names, rotation=90 if len(names) > 8 else 0, fontsize=8 if len(names) > 8 else 10)
    ax.set_xlim(0.4, len(names) + 0.6)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice")
    ax.set_title(f"Dice per class ({summary['num_cases']} cases)")
    ax.grid(axis="y", alpha=0.3)
    fig.subplots_adjust(left=0.1 * 6 / width, right=0.98, top=0.9, bottom=0.35 if len(names) > 8 else 0.12)
    _save(fig, out_path)
