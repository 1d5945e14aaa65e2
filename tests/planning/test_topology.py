import math

from seg3d.planning.topology import plan_topology


def test_isotropic_hippocampus_like():
    topo, patch = plan_topology((36, 50, 35), (1.0, 1.0, 1.0))
    assert topo.features == (32, 64, 128, 256)
    assert topo.strides == ((1, 1, 1),) + ((2, 2, 2),) * 3
    assert patch == (40, 56, 40)  # padded up to the total stride 8
    assert all(k == (3, 3, 3) for k in topo.kernel_sizes)


def test_anisotropic_axis_waits_and_gets_1_kernels():
    topo, patch = plan_topology((20, 160, 160), (4.0, 0.6, 0.6))
    z_strides = [s[0] for s in topo.strides]
    # in-plane pools first; z (4 mm) pools only once in-plane spacing is within 2x of it
    assert z_strides[:3] == [1, 1, 1] and topo.strides[1] == (1, 2, 2) and topo.strides[2] == (1, 2, 2)
    assert 2 in z_strides
    assert topo.kernel_sizes[0] == (1, 3, 3) and topo.kernel_sizes[-1] == (3, 3, 3)
    for p, t in zip(patch, topo.total_stride):
        assert p % t == 0
    # every pooled axis keeps at least 4 voxels at the bottleneck
    assert all(p // t >= 4 for p, t in zip((20, 160, 160), topo.total_stride) if t > 1)


def test_stage_and_feature_caps():
    topo, _ = plan_topology((256, 256, 256), (1, 1, 1), max_stages=6)
    assert topo.num_stages == 6 and max(topo.features) == 320
    topo2d, _ = plan_topology((1024, 1024), (1, 1), max_features=512, max_stages=8)
    assert topo2d.features[-1] == 512 and topo2d.num_stages == 8
    small, _ = plan_topology((16, 16, 16), (1, 1, 1), base_features=16, max_stages=4)
    assert small.features == (16, 32, 64) and math.prod(small.total_stride) == 64
