"""The argmax of resampled class probabilities, without resampling every class everywhere.

Reverting a prediction means: resample the ``K`` class probabilities from the network's grid to the input
grid (linear, or nearest along an anisotropic axis), then take the argmax per voxel. Done literally, a
512x512x500 CT with 118 classes interpolates 15 billion values to keep 131 million labels, and that, not
the network, can be most of a case's time (``benchmarks/RESULTS.md``, large CT).

Why most of that work can be skipped without changing a single label: every output voxel is a convex
combination of the corners of one *cell* of the source grid (the 2x2x2 source voxels around it), with the
same weights for every class. So in that cell class ``c`` is at most ``max_corners(p_c)`` and the best
class is at least ``max_k min_corners(p_k)``. A class whose maximum over a cell's corners is below that
bound cannot win anywhere in the cell. Segmentation outputs are nearly one-hot: in a trained network's
output most cells have a single *candidate* class (measured: 88% of the cells of TotalSegmentator's
example CT map at 3 mm, softened like a network's output), and those voxels take it with no interpolation
at all. The voxels of cells with several candidates interpolate only those (2-3 typically), with
:func:`seg3d.preprocessing.resample.interp_axis`'s arithmetic (lerp along axis 0, then 1, then 2), and the
first maximum wins as in ``torch.argmax``. The result equals ``argmax`` over all classes interpolated with
``interp_axis``, voxel for voxel (a margin of ``1e-5`` times the value scale keeps float rounding of the
interpolation on the safe side). A slab where most cells are uncertain (flat outputs, e.g. an untrained
network) interpolates every class that is a candidate anywhere in it instead, which is no slower than
interpolating all classes.

Measured (benchmarks/RESULTS.md, "Export stage"): 4.3x faster than interpolating all 118 classes on a
realistic map, the same time on a random network's flat output.

Memory: per slab of output rows, the slab's source rows, their per-cell maxima and minima and candidate
masks (about ``3K`` source-sized planes per source row), and the slab's index; bounded by ``slab_bytes``.
Device: whatever ``probs`` is on.
"""
from __future__ import annotations

import numpy as np

from seg3d.preprocessing.resample import interp_axis, resample_rows, source_coords

MARGIN = 1e-5  # relative to max(1, |bound|): covers float32 rounding of up to three lerps


def cell_index(n_in: int, n_out: int, mode: str):
    """For each output sample along one axis, the first source index of the cell holding it, ``(n_out,)``.

    A cell ``j`` spans source samples ``j`` and ``j + 1`` (just ``j`` when the axis has one sample).
    """
    return _Axis(n_in, n_out, mode, "cpu").cell


def _cell_extrema(src):
    """``(K, a, b, c)`` source block -> per-cell maxima and minima ``(K, a', b', c')`` over each cell's
    corners (``a' = a - 1``, or 1 when ``a == 1``)."""
    import torch

    hi = lo = src
    for axis in (1, 2, 3):
        n = src.shape[axis]
        if n > 1:
            hi = torch.maximum(hi.narrow(axis, 0, n - 1), hi.narrow(axis, 1, n - 1))
            lo = torch.minimum(lo.narrow(axis, 0, n - 1), lo.narrow(axis, 1, n - 1))
    return hi, lo


class _Axis:
    """One axis of the resampling: per output sample its cell and the two source samples and weight that
    :func:`interp_axis` uses (``nearest``: the same sample twice, weight 0, which ``lerp`` returns exactly)."""

    def __init__(self, n_in: int, n_out: int, mode: str, device, dtype=None):
        import torch

        i0, i1, w = source_coords(n_in, n_out, mode)
        if w is None:
            w = torch.zeros(n_out, dtype=torch.float64)
        self.i0, self.i1 = i0.to(device), i1.to(device)
        self.w = w.to(device=device, dtype=dtype or torch.float32)
        self.cell = i0.clamp(0, max(n_in - 2, 0)).to(device)


def _upsample_cells(cell_map, axes: list[_Axis], start: int, stop: int, lo_c: int):
    """Cell-grid map -> the output rows ``[start, stop)``: each output voxel takes its cell's value."""
    out = cell_map.index_select(0, axes[0].cell[start:stop] - lo_c)
    return out.index_select(1, axes[1].cell).index_select(2, axes[2].cell)


def _resolve_uncertain(block, cand, lo: int, lo_c: int, start: int, index, axes: list[_Axis],
                       chunk: int = 2**22) -> None:
    """Fill the voxels of ``index`` marked -1 (cells with several candidates): interpolate only their cell's
    candidates, with :func:`interp_axis`'s arithmetic (lerp along axis 0, then 1, then 2), first maximum wins.

    Voxels are grouped by their cell's candidate count (exact up to 4, then powers of two), so a few cells
    with many candidates do not pad the work of the many cells with two."""
    import torch

    k, r, ny, nx = block.shape
    values = index.view(-1)
    flat_idx = (values < 0).nonzero().flatten()
    if flat_idx.numel() == 0:
        return
    dev = block.device
    cy_n, cx_n = cand.shape[2:]
    plane = index.shape[1] * index.shape[2]
    oz = flat_idx // plane + start
    oy = (flat_idx % plane) // index.shape[2]
    ox = flat_idx % index.shape[2]
    cell = ((axes[0].cell[oz] - lo_c) * cy_n + axes[1].cell[oy]) * cx_n + axes[2].cell[ox]
    cells, inverse = torch.unique(cell, return_inverse=True)
    cand_u = cand.reshape(k, -1)[:, cells]  # (K, U)
    count = cand_u.sum(0)
    order = torch.where(cand_u, torch.arange(k, device=dev)[:, None], k)
    cls_u = order.sort(0).values[:int(count.max())].T.contiguous()  # (U, M) ascending class ids, k = none
    group = count[inverse]
    group = torch.where(group <= 4, group, 2 ** torch.ceil(torch.log2(group.float())).long())
    group, by_group = group.sort(stable=True)
    flat = block.reshape(-1)
    bounds = torch.unique_consecutive(group, return_counts=True)
    pos = 0
    for m, size in zip(bounds[0].tolist(), bounds[1].tolist()):
        m = min(m, cls_u.shape[1])
        step = max(1, chunk // m)
        for s in range(pos, pos + size, step):
            sel = by_group[s:min(s + step, pos + size)]
            cls = cls_u[inverse[sel], :m]
            vz, vy, vx = oz[sel], oy[sel], ox[sel]
            base = cls.clamp(max=k - 1) * (r * ny * nx)
            z0, z1 = (axes[0].i0[vz] - lo) * ny, (axes[0].i1[vz] - lo) * ny
            y0, y1 = axes[1].i0[vy], axes[1].i1[vy]
            x0, x1 = axes[2].i0[vx], axes[2].i1[vx]
            wz, wy, wx = axes[0].w[vz][:, None], axes[1].w[vy][:, None], axes[2].w[vx][:, None]

            def at(z, y, x, base=base):
                return flat[base + ((z + y) * nx + x)[:, None]]

            v = torch.lerp(torch.lerp(torch.lerp(at(z0, y0, x0), at(z1, y0, x0), wz),
                                      torch.lerp(at(z0, y1, x0), at(z1, y1, x0), wz), wy),
                           torch.lerp(torch.lerp(at(z0, y0, x1), at(z1, y0, x1), wz),
                                      torch.lerp(at(z0, y1, x1), at(z1, y1, x1), wz), wy), wx)
            v.masked_fill_(cls >= k, -torch.inf)
            best = v.argmax(1, keepdim=True)  # first maximum, classes ascending
            values[flat_idx[sel]] = cls.gather(1, best)[:, 0].to(values.dtype)
        pos += size


def _all_candidates(probs, classes: list[int], start: int, stop: int, dst, modes, idx_dtype):
    """The slab with every class in ``classes`` interpolated at every voxel (:func:`resample_rows`: bilinear
    in-plane in one ``F.interpolate`` call, float rounding may differ from :func:`interp_axis`), running argmax."""
    import torch

    x = resample_rows(probs, dst, modes, start, stop, channels=classes, keep_float64=True)
    best = x[0].clone()
    index = torch.full(x.shape[1:], classes[0], dtype=idx_dtype, device=x.device)
    for j in range(1, len(classes)):
        better = x[j] > best
        torch.maximum(best, x[j], out=best)
        index.masked_fill_(better, classes[j])
    return index


def argmax_slabs(probs, out_shape, modes, slab_bytes: int, fallback: bool | None = None):
    """Yield ``(start, stop, index)`` for consecutive slabs of output rows (axis 0) until ``out_shape[0]``.

    Per slab: the cells' candidate classes (module docstring); voxels whose cell has one candidate take it
    without any interpolation; the others interpolate their cell's candidates only. When most of the slab
    is uncertain (a network with flat, untrained outputs), it falls back to interpolating every class that
    is a candidate somewhere in the slab at every voxel, with ``F.interpolate`` in-plane (equal up to float
    rounding at near-ties).

    Args:
        probs: ``(K, z, y, x)`` class probabilities (or any scores whose argmax is wanted) on the source
            grid, torch tensor, float16/32/64, any device. Interpolated and compared in float32, float64
            ones in float64 (as :func:`interp_axis` does).
        out_shape: the output grid ``(Z, Y, X)``.
        modes: ``"linear"`` or ``"nearest"`` per spatial axis (as :func:`interp_axis`).
        slab_bytes: working memory per slab, bytes (approximate).
        fallback: ``None`` chooses per slab; ``True``/``False`` forces interpolating every slab candidate
            everywhere / only the uncertain voxels' candidates (tests, benchmarks).

    Yields:
        ``index``: ``(stop - start, Y, X)`` int16 (int32 when ``K > 32767``) class indices, equal to the
        argmax over all ``K`` classes interpolated by :func:`interp_axis` (except in fallback slabs, above).

    Raises:
        ValueError: the grids are not 3D.
    """
    import torch

    k = int(probs.shape[0])
    src = tuple(int(n) for n in probs.shape[1:])
    dst = tuple(int(n) for n in out_shape)
    if len(src) != 3 or len(dst) != 3 or len(modes) != 3:
        raise ValueError(f"argmax_slabs needs 3D grids, not {src} -> {dst}")
    dev = probs.device
    work = torch.float64 if probs.dtype == torch.float64 else torch.float32
    axes = [_Axis(n_in, n_out, m, dev, work) for n_in, n_out, m in zip(src, dst, modes)]
    plane_out = dst[1] * dst[2]
    plane_src = src[1] * src[2]
    # per output row: the index and the uncertain voxels' bookkeeping (~32 B); per source row: the block,
    # its cell maxima and minima and their temporaries, the candidates (~25 B per class)
    rows_out = max(1, slab_bytes // (32 * plane_out))
    rows_src = max(2, slab_bytes // (25 * k * plane_src))
    scale = max(1, dst[0] // max(src[0], 1))
    n = max(1, min(rows_out, (rows_src - 1) * scale))
    idx_dtype = torch.int16 if k <= 32767 else torch.int32
    c0 = axes[0].cell.tolist()
    with torch.no_grad():
        for start in range(0, dst[0], n):
            stop = min(dst[0], start + n)
            lo_c, hi_c = c0[start], c0[stop - 1]
            lo, hi = lo_c, min(hi_c + 1, src[0] - 1)
            block = probs[:, lo:hi + 1].to(work)
            cmax, cmin = _cell_extrema(block)  # cells lo_c .. hi_c along axis 0 (one row when src[0] == 1)
            bound, winner = cmin.max(0)
            cand = cmax >= bound - MARGIN * bound.abs().clamp(min=1.0)
            del cmax, cmin
            ncand = cand.sum(0)
            uncertain = ncand > 1
            classes = cand.flatten(1).any(1).nonzero().flatten().tolist()
            if len(classes) == 1:
                yield start, stop, torch.full((stop - start, *dst[1:]), classes[0], dtype=idx_dtype, device=dev)
                continue
            # work of resolving uncertain voxels (gathers per voxel and candidate) vs interpolating every
            # slab candidate everywhere; the share of uncertain cells stands for the share of voxels
            m = int(ncand.max())
            share = float(uncertain.float().mean())
            if fallback or (fallback is None and share * m * 3 > len(classes)):
                # rows of interpolated candidates plus the two interpolation operands within slab_bytes
                sub = max(1, slab_bytes // (3 * len(classes) * plane_out * 4))
                for s0 in range(start, stop, sub):
                    s1 = min(stop, s0 + sub)
                    yield s0, s1, _all_candidates(probs, classes, s0, s1, dst, modes, idx_dtype)
                continue
            cell_label = torch.where(uncertain, -1, winner).to(idx_dtype)
            index = _upsample_cells(cell_label, axes, start, stop, lo_c).contiguous()
            _resolve_uncertain(block, cand, lo, lo_c, start, index, axes)
            yield start, stop, index


def argmax_reference(probs, out_shape, modes, rows: int = 8) -> np.ndarray:
    """Every class interpolated at every voxel, then ``torch.argmax``: what :func:`argmax_slabs` must equal
    (for tests and benchmarks; ``rows`` output rows at a time, memory ``K x rows`` output planes)."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, int(out_shape[0]), rows):
            stop = min(int(out_shape[0]), start + rows)
            x = interp_axis(probs, 1, int(out_shape[0]), modes[0], start, stop)
            for a in (1, 2):
                x = interp_axis(x, a + 1, int(out_shape[a]), modes[a])
            out.append(torch.argmax(x if x.dtype == torch.float64 else x.float(), dim=0).cpu().numpy())
    return np.concatenate(out)
