import json
from pathlib import Path

import pytest

from seg3d.errors import Seg3dError
from seg3d.planning.presets import PRESET_NAMES, load_preset

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_packaged_presets_are_identical_to_plans_presets(name):
    assert (REPO / "seg3d" / "presets" / f"{name}.json").read_bytes() == \
        (REPO / "plans" / "presets" / f"{name}.json").read_bytes()


def test_presets_load_and_memory_override():
    budgets = [load_preset(n).memory_gb for n in ("8gb", "24gb", "40gb", "80gb")]
    assert budgets == [8.0, 24.0, 40.0, 80.0]
    assert load_preset("8GB", memory_gb=11).memory_gb == 11.0
    cpu = load_preset("cpu")
    assert cpu.device == "cpu" and cpu.precision == "fp32" and cpu.max_batch == 2
    with pytest.raises(Seg3dError):
        load_preset("12gb")
    with pytest.raises(Seg3dError):
        load_preset("8gb", memory_gb=0.1)


def test_cpu_preset_training_defaults_reach_the_plan_and_are_checked():
    from seg3d.planning.presets import load_preset, preset_from_dict

    cpu = load_preset("cpu")
    assert cpu.training == {"optimizer": "adamw", "lr": 0.003, "augmentation": "light"}
    assert load_preset("8gb").training == {}  # GPU presets train nnU-Net's way
    raw = json.loads((REPO / "plans" / "presets" / "cpu.json").read_text())
    raw["training"] = {"optimiser": "adamw"}
    with pytest.raises(Seg3dError, match="unknown training defaults: optimiser"):
        preset_from_dict(raw)
