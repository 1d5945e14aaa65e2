"""Shared fixtures: real data from ../shared (skipped with a reason when absent), phantoms, a tiny plan."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "dataset.json").is_file():
        pytest.skip(f"shared dataset {name} not found at {path} (tests using real data need ../shared/data)")
    return path


@pytest.fixture(scope="session")
def hippocampus_dir() -> Path:
    """The MSD hippocampus data in nnU-Net v2 layout (195 cases), read-only."""
    return _shared("Dataset004_Hippocampus")


@pytest.fixture(scope="session")
def ct_example_dir() -> Path:
    """Three TotalSegmentator example CTs (117 classes declared, anisotropic), read-only."""
    return _shared("Dataset101_TotalSegExampleCT")


@pytest.fixture(scope="session")
def mr_example_dir() -> Path:
    return _shared("Dataset102_TotalSegExampleMR")


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A small phantom dataset (8 training cases, 2 test cases), shared by the session: do not modify it."""
    from seg3d.synthetic import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_cases=8, num_test=2, seed=1,
                                shape=(16, 48, 48))


@pytest.fixture
def tiny_plan():
    """A hand-built plan for a 1-channel, 3-label dataset with a tiny anisotropic 3D network.

    Independent of the planner, so other stages can be tested on their own.
    """
    from seg3d.core.plan import ChannelNormalization, Configuration, Plan, Topology

    topo = Topology(kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)),
                    strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)), features=(8, 16, 32))
    cfg = Configuration(name="3d_fullres", spacing=(3.0, 1.0, 1.0), patch_size=(8, 32, 32), batch_size=2,
                        topology=topo, median_shape=(16, 48, 48), estimated_memory_gb=0.1, precision="bf16",
                        mirror_axes=(0, 1, 2), anisotropic_axis=0)
    return Plan(dataset_name="Phantom", channel_names=("MRI",),
                labels={"background": 0, "core": 1, "rim": 2, "satellite": 3},
                normalization=(ChannelNormalization("MRI", "zscore"),),
                configurations={"3d_fullres": cfg}, original_median_spacing=(3.0, 1.0, 1.0),
                original_median_shape=(16, 48, 48), preset="test")
