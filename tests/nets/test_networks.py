"""UNet and UNet++ output contracts on anisotropic plans (2D and 3D, with and without deep supervision),
meta-device builds for the planner, the FLOPs counter, and that the DS outputs feed the loss."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from seg3d.core.plan import Configuration, Topology
from seg3d.losses import build_loss
from seg3d.nets import build_network
from seg3d.nets.flops import network_cost

TOPO_3D = Topology(kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)),
                   features=(4, 8, 16))
TOPO_2D = Topology(kernel_sizes=((3, 3),) * 4, strides=((1, 1), (2, 2), (2, 1), (2, 2)), features=(4, 8, 8, 16))


def _cfg(topo, patch):
    return Configuration(name="3d_fullres" if len(patch) == 3 else "2d", spacing=(1.0,) * len(patch),
                         patch_size=patch, batch_size=2, topology=topo, median_shape=patch, estimated_memory_gb=0.1)


def _level_shapes(topo, patch):
    """Shape of decoder level j = patch / prod(strides[1..j]) for j = 0..num_stages-2."""
    shapes, cur = [], list(patch)
    for j in range(topo.num_stages - 1):
        if j:
            cur = [c // s for c, s in zip(cur, topo.strides[j])]
        shapes.append(tuple(cur))
    return shapes


@pytest.mark.parametrize("arch", ["unet", "unetpp"])
@pytest.mark.parametrize("topo,patch", [(TOPO_3D, (4, 16, 16)), (TOPO_2D, (16, 8))])
def test_output_contract(arch, topo, patch):
    torch.manual_seed(0)
    net = build_network(_cfg(topo, patch), in_channels=2, num_classes=3, arch=arch, deep_supervision=True)
    x = torch.randn(2, 2, *patch)
    outs = net.train()(x)
    levels = _level_shapes(topo, patch)
    shapes = [tuple(o.shape[2:]) for o in outs]
    assert shapes[:len(levels)] == levels  # full resolution first, then each coarser decoder level
    assert all(o.shape[:2] == (2, 3) for o in outs)
    if arch == "unetpp":  # then the nested full-resolution heads X[0][L-1..1]
        assert shapes[len(levels):] == [tuple(patch)] * (topo.num_stages - 2)
    else:
        assert len(outs) == len(levels)
    target = torch.randint(0, 3, (2, 1, *patch))
    loss = build_loss("ce_dice", 3)(outs, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in net.parameters())  # every head takes part (DDP-safe)
    net.eval()
    with torch.no_grad():
        y = net(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, *patch)
    plain = build_network(_cfg(topo, patch), 2, 3, arch=arch, deep_supervision=False).train()
    assert plain(x).shape == (2, 3, *patch)


@pytest.mark.parametrize("arch", ["unet", "unetpp"])
def test_builds_and_runs_on_the_meta_device(arch):
    with torch.device("meta"):
        net = build_network(_cfg(TOPO_3D, (4, 16, 16)), 1, 4, arch=arch)
        outs = net.train()(torch.empty(2, 1, 4, 16, 16))
    assert all(o.is_meta for o in outs) and outs[0].shape == (2, 4, 4, 16, 16)


def test_unetpp_is_nested_and_larger_than_unet():
    cfg = _cfg(TOPO_3D, (4, 16, 16))
    unet, unetpp = build_network(cfg, 1, 3, "unet"), build_network(cfg, 1, 3, "unetpp")
    assert set(unetpp.nodes) == {"0_1", "1_1", "0_2"}  # X[i][j], i + j <= L = 2
    cu, cp = network_cost(unet, 1, cfg.patch_size), network_cost(unetpp, 1, cfg.patch_size)
    assert cp.macs > cu.macs and cp.parameters > cu.parameters


def test_flops_counter_matches_hand_count():
    net = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ConvTranspose3d(4, 3, 2, stride=2))
    cost = network_cost(net, 2, (4, 6, 8))
    conv = 4 * 6 * 8 * 4 * 27 * 2            # output voxels * out ch * kernel * in ch
    tconv = 4 * 6 * 8 * 4 * 8 * 3            # input voxels * in ch * kernel * out ch
    assert cost.macs == conv + tconv
    assert cost.parameters == (2 * 4 * 27 + 4) + (4 * 3 * 8 + 3)
    assert not any(p.is_meta for p in net.parameters())  # the caller's network is untouched
    assert math.isclose(cost.gflops, 2 * cost.macs / 1e9)


def test_count_flops_scales_with_batch():
    from seg3d.nets.flops import count_flops

    net = build_network(_cfg(TOPO_3D, (4, 16, 16)), 1, 3)
    assert count_flops(net, (2, 1, 4, 16, 16)) == 2 * 2 * network_cost(net, 1, (4, 16, 16)).macs
