"""`seg3d plan` end to end, golden plans, plan JSON round trip and a hand-edited invalid plan."""
import json
import shutil

import pytest
from seg3d.cli.main import app
from typer.testing import CliRunner

from seg3d.core.plan import Plan
from seg3d.errors import Seg3dError
from seg3d.planning import plan_dataset
from seg3d.planning.golden import GOLDEN_DIR, compute_phantom_plan, plan_diff

runner = CliRunner()


@pytest.fixture(scope="module")
def hippocampus_plan_dir(hippocampus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hippo_plan")
    res = runner.invoke(app, ["plan", str(hippocampus_dir), "-o", str(out), "--workers", "2"])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_plan_cli_on_hippocampus(hippocampus_plan_dir):
    out, output = hippocampus_plan_dir
    plan = Plan.load(out)
    assert (out / "fingerprint.json").is_file()
    cfg = plan.config("3d_fullres")
    assert cfg.batch_size >= 2 and cfg.estimated_memory_gb <= 8
    assert plan.label_values == (0, 1, 2) and plan.normalization[0].scheme == "zscore"
    for text in ("3d_fullres", "×".join(map(str, cfg.patch_size)), "2d"):
        assert text in output


def test_hippocampus_golden_plan(hippocampus_plan_dir):
    out, _ = hippocampus_plan_dir
    diff = plan_diff(GOLDEN_DIR / "hippocampus_8gb.json", Plan.load(out).to_dict())
    assert not diff, "planner output changed; review and run `python -m seg3d.planning.golden --update`:\n" + diff


def test_phantom_golden_plan(tmp_path):
    diff = plan_diff(GOLDEN_DIR / "phantom_8gb.json", compute_phantom_plan(tmp_path))
    assert not diff, "planner output changed; review and run `python -m seg3d.planning.golden --update`:\n" + diff


def test_plan_cli_on_phantom_with_cpu_preset_and_roundtrip(phantom_dir, tmp_path):
    res = runner.invoke(app, ["plan", str(phantom_dir), "-o", str(tmp_path), "--preset", "cpu", "-w", "0"])
    assert res.exit_code == 0, res.output
    plan = Plan.load(tmp_path / "plans.json")
    assert plan.preset == "cpu" and plan.config("3d_fullres").precision == "fp32"
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    # the fingerprint is reused while the dataset is unchanged
    mtime = (tmp_path / "fingerprint.json").stat().st_mtime_ns
    again = plan_dataset(phantom_dir, tmp_path, preset="cpu", workers=0)
    assert again == plan and (tmp_path / "fingerprint.json").stat().st_mtime_ns == mtime


def test_gpu_memory_option_changes_the_budget(phantom_dir, tmp_path):
    res = runner.invoke(app, ["plan", str(phantom_dir), "-o", str(tmp_path), "--gpu-memory-gb", "11", "-w", "0"])
    assert res.exit_code == 0, res.output
    assert Plan.load(tmp_path).gpu_memory_gb == 11.0


def test_hand_edited_invalid_plan_gives_a_clear_error(phantom_dir, tmp_path):
    plan_dataset(phantom_dir, tmp_path, workers=0)
    path = tmp_path / "plans.json"
    d = json.loads(path.read_text())
    d["configurations"]["3d_fullres"]["patch_size"][1] += 3
    path.write_text(json.dumps(d))
    with pytest.raises(Seg3dError) as e:
        Plan.load(path)
    assert "plans.json" in str(e.value) and "not divisible" in str(e.value)


def test_broken_dataset_is_refused_listing_every_problem(phantom_dir, tmp_path):
    broken = shutil.copytree(phantom_dir, tmp_path / "broken")
    (broken / "labelsTr" / "phantom_001.nii.gz").unlink()
    (broken / "imagesTr" / "phantom_002_0000.nii.gz").write_bytes(b"not an image")
    res = runner.invoke(app, ["plan", str(broken), "-o", str(tmp_path / "plan"), "-w", "0"])
    assert res.exit_code == 1
    assert "phantom_001" in res.output and "phantom_002" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "plan" / "plans.json").exists()


def test_unknown_preset_is_an_error(phantom_dir, tmp_path):
    res = runner.invoke(app, ["plan", str(phantom_dir), "-o", str(tmp_path), "--preset", "4gb"])
    assert res.exit_code == 1 and "unknown preset" in res.output
