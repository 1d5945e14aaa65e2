"""Patch/batch search under a budget, the 5% batch cap, the batch floor, 3d_lowres and 2d."""
import math

import pytest

from seg3d.planning.planner import plan_from_fingerprint
from seg3d.planning.presets import load_preset


def test_batch_floor_on_a_tiny_dataset(fingerprint):
    # 5 cases of 40^3: 5% of the dataset is far less than one patch, the batch still is 2
    plan = plan_from_fingerprint(fingerprint([(1, 1, 1)] * 5, [(40, 40, 40)] * 5), "8gb")
    cfg = plan.config("3d_fullres")
    assert cfg.patch_size == (40, 40, 40) and cfg.batch_size == 2


def test_five_percent_cap(fingerprint):
    cases = 300
    plan = plan_from_fingerprint(fingerprint([(1, 1, 1)] * cases, [(40, 40, 40)] * cases), "80gb")
    cfg = plan.config("3d_fullres")
    total = 40 ** 3 * cases
    assert cfg.batch_size * math.prod(cfg.patch_size) <= 0.05 * total
    assert (cfg.batch_size + 1) * math.prod(cfg.patch_size) > 0.05 * total  # memory is not what limits it
    assert cfg.estimated_memory_gb <= 80


@pytest.fixture(scope="module")
def ct_plans():
    from seg3d.fingerprint import CaseFingerprint, ChannelStats, Fingerprint

    cases = tuple(CaseFingerprint(f"c{i}", (1.0, 0.8, 0.8), (400, 512, 512), (400, 512, 512), {0: 1, 1: 1})
                  for i in range(10))
    stats = (ChannelStats(0.0, 1.0, 0.0, -1.0, 1.0, -1.0, 1.0),)
    fp = Fingerprint("CT", ("CT",), {"background": 0, "organ": 1}, cases, stats, 1.0, "d")
    return {p: plan_from_fingerprint(fp, p) for p in ("8gb", "24gb")}


def test_large_images_shrink_the_patch_to_the_budget(ct_plans):
    for name, plan in ct_plans.items():
        cfg = plan.config("3d_fullres")
        assert cfg.estimated_memory_gb <= load_preset(name).memory_gb
        assert cfg.batch_size >= 2
        assert math.prod(cfg.patch_size) < math.prod(cfg.median_shape)
    assert math.prod(ct_plans["8gb"].config("3d_fullres").patch_size) < \
        math.prod(ct_plans["24gb"].config("3d_fullres").patch_size)


def test_lowres_covers_a_quarter_of_its_median_image(ct_plans):
    plan = ct_plans["8gb"]
    full, low = plan.config("3d_fullres"), plan.config("3d_lowres")
    assert math.prod(full.patch_size) / math.prod(full.median_shape) < 0.25
    assert math.prod(low.patch_size) / math.prod(low.median_shape) >= 0.25
    assert all(lo > fu for lo, fu in zip(low.spacing, full.spacing))
    assert low.estimated_memory_gb <= 8


def test_2d_slices_along_the_coarse_axis(fingerprint):
    plan = plan_from_fingerprint(fingerprint([(4.0, 0.6, 0.6)] * 10, [(20, 320, 320)] * 10), "8gb")
    cfg2d = plan.config("2d")
    assert cfg2d.slice_axis == 0 and len(cfg2d.patch_size) == 2 and cfg2d.spacing == (0.6, 0.6)
    assert plan.config("3d_fullres").anisotropic_axis == 0


def test_cpu_preset_plans_a_small_fp32_network(fingerprint):
    fp = fingerprint([(1, 1, 1)] * 200, [(36, 50, 35)] * 200)
    cpu, gpu = plan_from_fingerprint(fp, "cpu").config("3d_fullres"), plan_from_fingerprint(fp, "8gb").config("3d_fullres")
    assert cpu.precision == "fp32" and gpu.precision == "fp16"
    assert cpu.topology.features[0] == 16 and cpu.topology.num_stages <= 4 and cpu.batch_size == 2
    assert cpu.estimated_memory_gb < gpu.estimated_memory_gb


def test_a_budget_nothing_fits_gives_a_note_not_a_crash(fingerprint):
    from seg3d.planning.presets import load_preset

    fp = fingerprint([(1, 1, 1)] * 4, [(32, 32, 32)] * 4)
    plan = plan_from_fingerprint(fp, load_preset("8gb", memory_gb=0.501))  # 1 MB above the CUDA context
    cfg = plan.config("3d_fullres")
    assert cfg.batch_size == 2 and cfg.estimated_memory_gb > 0.501
    assert any("exceeds" in n for n in plan.notes)


def test_cpu_preset_keeps_the_patch_inside_the_median_image(fingerprint):
    # hippocampus-like: median 36x50x35 at 1 mm. GPU presets pad the patch up to the pooling multiple
    # (40x56x40, as nnU-Net does); the cpu preset shrinks it back inside the image (padding is wasted compute)
    fp = fingerprint([(1, 1, 1)] * 40, [(36, 50, 35)] * 40)
    gpu = plan_from_fingerprint(fp, "8gb").config("3d_fullres")
    cpu = plan_from_fingerprint(fp, "cpu").config("3d_fullres")
    assert gpu.patch_size == (40, 56, 40)
    assert cpu.patch_size == (32, 48, 32)
    for p, s in zip(cpu.patch_size, cpu.topology.total_stride):
        assert p % s == 0
    # an image smaller than the pooling floor keeps the smallest legal patch rather than none
    tiny = plan_from_fingerprint(fingerprint([(1, 1, 1)] * 40, [(6, 50, 35)] * 40), "cpu").config("3d_fullres")
    assert all(p >= 1 for p in tiny.patch_size) and tiny.patch_size[1:] == (48, 32)
