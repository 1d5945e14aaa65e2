"""`seg3d predict --engine ray`: the local runner's guarantees on a Ray cluster (127.0.0.1 only).

One private local cluster is shared by the module (start-up costs seconds); the driver-kill and the
storage-visibility tests start their own processes. Every test is bounded in time (pytest-timeout).
"""
from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from inference_helpers import make_model_dir, random_geometry, write_case

from seg3d.core.settings import PredictSettings, RaySettings
from seg3d.errors import Seg3dError
from seg3d.runners.ray import CaseWorker, WorkerSpec, plan_workers

pytestmark = pytest.mark.timeout(420)
SEG3D = Path(sys.executable).parent / "seg3d"
HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed: pip install 'seg3d[ray]' "
                                                    "(make test installs it)")


@pytest.fixture(scope="module")
def cluster():
    """A private Ray cluster on 127.0.0.1 (2 CPUs), used by every in-process run of this module."""
    if not HAVE_RAY:
        pytest.skip("Ray is not installed: pip install 'seg3d[ray]' (make test installs it)")
    from seg3d.runners.ray import ray_cluster

    with ray_cluster(RaySettings(object_store_mb=128)) as ray:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        yield ray


@needs_ray
def test_a_private_cluster_is_loopback_only_and_its_workers_run_at_the_users_priority(cluster):
    """Every socket of the private cluster listens on 127.0.0.1, and workers are not niced (Ray's default 15)."""
    import psutil

    niceness = cluster.get(cluster.remote(lambda: os.nice(0)).options(num_cpus=1).remote())
    assert niceness == os.nice(0)
    ours = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]
    addresses = {getattr(ipaddress.ip_address(c.laddr.ip), "ipv4_mapped", None) or ipaddress.ip_address(c.laddr.ip)
                 for c in listening}  # an IPv6 socket bound to ::ffff:127.0.0.1 is loopback too
    assert listening and addresses == {ipaddress.ip_address("127.0.0.1")}


@pytest.fixture
def model(tmp_path, tiny_plan) -> Path:
    return make_model_dir(tmp_path / "model", tiny_plan, folds=(0,))


def _inputs(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` one-channel cases with random oblique geometries (small: the network part stays short)."""
    rng = np.random.default_rng(seed)
    ids = [f"case{i:02d}" for i in range(n)]
    for i, c in enumerate(ids):
        write_case(folder, c, random_geometry(rng), seed=i)
    return ids


def _manifest(out: Path) -> dict:
    return json.loads((out / "predict_manifest.json").read_text())


def _same_mask(a: Path, b: Path) -> bool:
    import nibabel as nib

    x, y = nib.load(a), nib.load(b)
    return x.header.binaryblock == y.header.binaryblock and np.array_equal(np.asarray(x.dataobj),
                                                                           np.asarray(y.dataobj))


def _pid_logger(pids: list[int]):
    """A ``log`` callback collecting the process id of each worker as it reports its model loaded."""
    def log(line: str) -> None:
        m = re.search(r"pid (\d+) on .*model loaded", line)
        if m:
            pids.append(int(m.group(1)))

    return log


def _cli(*args: str):
    from seg3d.cli.main import app
    from typer.testing import CliRunner

    return CliRunner().invoke(app, list(args))


# --- without a cluster -----------------------------------------------------------------------------------------

def test_without_ray_the_engine_is_a_one_line_error_naming_the_extra(tmp_path, model, monkeypatch):
    _inputs(tmp_path / "in", 1)
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does when the extra is not installed
    res = _cli("predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model),
               "--engine", "ray")
    assert res.exit_code == 1
    lines = [s for s in res.output.splitlines() if s.strip()]
    assert len(lines) == 1 and "seg3d[ray]" in lines[0] and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_workers_are_planned_from_the_cluster_resources():
    mixed = [{"CPU": 16.0, "GPU": 2.0}, {"CPU": 8.0}]
    specs = plan_workers(RaySettings(cpus_per_worker=4), mixed)
    assert [s.device for s in specs] == ["cuda", "cuda", "cpu", "cpu", "cpu", "cpu"]  # 16-8=8 -> 2, 8 -> 2
    assert specs[0] == WorkerSpec(0, "cuda", 4, 1.0) and specs[-1] == WorkerSpec(5, "cpu", 4, 0.0)
    assert [s.device for s in plan_workers(RaySettings(workers=3, cpus_per_worker=4), mixed)] == \
        ["cuda", "cuda", "cpu"]
    assert {s.device for s in plan_workers(RaySettings(cpus_per_worker=4), mixed, device="cpu")} == {"cpu"}
    assert len(plan_workers(RaySettings(cpus_per_worker=4), mixed, device="cpu")) == 6
    assert [s.device for s in plan_workers(RaySettings(cpus_per_worker=2, gpus_per_worker=0.5), mixed,
                                           device="cuda")] == ["cuda"] * 4
    assert plan_workers(RaySettings(), [{"CPU": 2.0}]) == [WorkerSpec(0, "cpu", 2, 0.0)]  # 4 CPUs capped to 2
    with pytest.raises(Seg3dError, match="no node .* has that many CPUs"):
        plan_workers(RaySettings(cpus_per_worker=32), mixed)
    with pytest.raises(Seg3dError, match="no node with 1 free GPU"):
        plan_workers(RaySettings(), [{"CPU": 8.0}], device="cuda")
    with pytest.raises(Seg3dError, match="--workers 9 do not fit"):
        plan_workers(RaySettings(workers=9, cpus_per_worker=4), mixed)
    with pytest.raises(Seg3dError, match="--ray-address"):
        RaySettings(address="10.0.0.1")


def test_the_storage_probe_names_each_problem(tmp_path, model):
    """A worker's probe, called in this process: a folder it cannot see, and an output folder that is not
    the driver's (the driver's token file is missing: a node-local folder of the same name)."""
    in_dir, out = tmp_path / "in", tmp_path / "out"
    _inputs(in_dir, 1)
    out.mkdir()
    sample = in_dir / "case00_0000.nii.gz"
    w = CaseWorker(0, str(model), PredictSettings(device="cpu"), 1)
    (out / ".seg3d-probe-t").write_text("secret")
    assert w.probe(str(in_dir), [(str(sample), sample.stat().st_size)], str(out), ".seg3d-probe-t", "secret") == []
    assert sorted(os.listdir(out)) == [".seg3d-probe-t"]  # its own probe file is gone again
    problems = w.probe(str(tmp_path / "nowhere"), [], str(out), ".seg3d-probe-t", "other")
    assert any("cannot see the input folder" in p for p in problems)
    assert any("sees a different output folder" in p and "shared" in p for p in problems)
    assert w.probe(str(in_dir), [(str(sample), 1)], str(tmp_path / "gone"), "x", "y") == \
        [f"sees {sample} with {sample.stat().st_size} bytes, the driver 1: not the same storage",
         f"cannot see the output folder {tmp_path / 'gone'}"]
    broken = CaseWorker(1, str(tmp_path / "no_model"), PredictSettings(device="cpu"), 1)
    assert broken.probe(str(in_dir), [], str(out), ".seg3d-probe-t", "secret")[0].startswith(
        "cannot load the model")


@needs_ray
def test_an_address_where_no_cluster_listens_is_a_clear_error_at_once(tmp_path, model):
    _inputs(tmp_path / "in", 1)
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    res = _cli("predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model),
               "--engine", "ray", "--ray-address", f"127.0.0.1:{port}")
    assert res.exit_code == 1 and time.monotonic() - t0 < 60
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in res.output and "ray start --head" in res.output
    bad = _cli("predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model),
               "--ray-address", "auto")
    assert bad.exit_code == 1 and "need --engine ray" in bad.output


# --- on the module's cluster -------------------------------------------------------------------------------------

@needs_ray
def test_outputs_equal_local_predict_voxel_for_voxel_and_header_for_header(cluster, tmp_path, model):
    import torch

    from seg3d.runners.local import predict_folder
    from seg3d.runners.ray import predict_folder_ray

    ids = _inputs(tmp_path / "in", 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker below (1 CPU each): the same arithmetic
    try:
        local = predict_folder(tmp_path / "in", tmp_path / "local", model, PredictSettings())
    finally:
        torch.set_num_threads(threads)
    seen: list[tuple[int, int, str]] = []
    s = predict_folder_ray(tmp_path / "in", tmp_path / "ray", model, PredictSettings(),
                           RaySettings(workers=2, cpus_per_worker=1),
                           progress=lambda d, t, m: seen.append((d, t, m)))
    assert local["predicted"] == s["predicted"] == 4 and not s["failed"]
    for c in ids:
        assert _same_mask(tmp_path / "local" / f"{c}.nii.gz", tmp_path / "ray" / f"{c}.nii.gz"), c
    m = _manifest(tmp_path / "ray")
    assert m["engine"] == "ray" and len(m["ray"]["workers"]) == 2
    assert [c["case"] for c in m["cases"]] == ids and all(c["status"] == "ok" and c["attempts"] == 1
                                                        for c in m["cases"])
    assert len({c["worker"] for c in m["cases"]}) == 2  # both workers took cases
    assert seen[-1][:2] == (4, 4) and re.search(r"cases/s, ETA \d+:\d\d", seen[-1][2])
    assert sorted(os.listdir(tmp_path / "ray")) == sorted([f"{c}.nii.gz" for c in ids] + ["predict_manifest.json"])


@needs_ray
def test_a_worker_killed_mid_run_every_output_once_and_whole_retry_in_the_manifest(cluster, tmp_path, model):
    from seg3d.io.image import read_image
    from seg3d.runners.ray import predict_folder_ray

    ids = _inputs(tmp_path / "in", 6)
    pids: list[int] = []
    killed: list[int] = []

    log = _pid_logger(pids)

    def progress(done: int, total: int, message: str) -> None:
        if done >= 1 and not killed:  # the worker still holds cases in flight (2 per worker, 5 left)
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    s = predict_folder_ray(tmp_path / "in", tmp_path / "out", model, PredictSettings(),
                           RaySettings(workers=2, cpus_per_worker=1), progress=progress, log=log)
    assert killed and s["predicted"] == 6 and not s["failed"]
    assert sorted(os.listdir(tmp_path / "out")) == sorted([f"{c}.nii.gz" for c in ids] + ["predict_manifest.json"])
    for c in ids:  # whole: every mask opens, with its input's grid
        img = read_image(tmp_path / "out" / f"{c}.nii.gz")
        assert img.geometry == read_image(tmp_path / "in" / f"{c}_0000.nii.gz").geometry
    retried = [c for c in _manifest(tmp_path / "out")["cases"] if c["attempts"] > 1]
    assert retried, "a case in flight on the killed worker must have been tried again"
    for c in retried:
        assert c["status"] == "ok" and f"pid {killed[0]} " in c["retries"][0]["worker"]
        assert "died" in c["retries"][0]["error"] and f"pid {killed[0]} " not in c["worker"]


@needs_ray
@pytest.mark.slow
def test_when_no_worker_is_left_the_remaining_cases_fail_with_the_reason(cluster, tmp_path, model):
    """Retries are bounded: one worker that Ray may not restart is killed; every case still gets a record."""
    from seg3d.runners.ray import predict_folder_ray

    ids = _inputs(tmp_path / "in", 5)
    pids: list[int] = []

    log = _pid_logger(pids)

    def progress(done: int, total: int, message: str) -> None:
        if done == 1 and pids:
            os.kill(pids.pop(), signal.SIGKILL)

    s = predict_folder_ray(tmp_path / "in", tmp_path / "out", model, PredictSettings(),
                           RaySettings(workers=1, cpus_per_worker=1, max_restarts=0), progress=progress, log=log)
    cases = {c["case"]: c for c in _manifest(tmp_path / "out")["cases"]}
    assert sorted(cases) == ids and s["failed"] and s["predicted"] + len(s["failed"]) == 5
    for c in cases.values():
        if c["status"] == "failed":
            assert "no Ray worker is left" in c["error"] and f"{c['case']}_0000.nii.gz" in c["error"]
        else:
            assert (tmp_path / "out" / f"{c['case']}.nii.gz").is_file()
    assert not list((tmp_path / "out").glob(".*part*"))


@needs_ray
def test_a_broken_input_is_reported_the_rest_done_exit_1(cluster, tmp_path, model):
    ids = _inputs(tmp_path / "in", 3)
    (tmp_path / "in" / "broken_0000.nii.gz").write_bytes(b"\x1f\x8b this is not an image")
    res = _cli("predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model),
               "--engine", "ray", "--workers", "1", "--cpus-per-worker", "2")
    assert res.exit_code == 1, res.output
    assert "broken_0000.nii.gz" in res.output and "predicted 3" in res.output
    assert all((tmp_path / "out" / f"{c}.nii.gz").is_file() for c in ids)
    assert not (tmp_path / "out" / "broken.nii.gz").exists()
    m = _manifest(tmp_path / "out")
    bad = [c for c in m["cases"] if c["status"] == "failed"]
    assert [c["case"] for c in bad] == ["broken"] and "broken_0000.nii.gz" in bad[0]["error"]
    assert [f["case"] for f in m["failures"]] == ["broken"]


# --- own processes -------------------------------------------------------------------------------------------------

def _session_processes(sid: int) -> list[int]:
    """Processes of the session we started (a killed driver can leave Ray's agents behind)."""
    import psutil

    out = []
    for p in psutil.pids():
        try:
            if os.getsid(p) == sid and p != os.getpid():
                out.append(p)
        except OSError:
            pass
    return out


def _end_session(proc: subprocess.Popen) -> None:
    for pid in _session_processes(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    proc.wait(timeout=30)


@needs_ray
@pytest.mark.slow
def test_continue_after_the_driver_is_killed_redoes_nothing_complete(cluster, tmp_path, model):
    ids = _inputs(tmp_path / "in", 6)
    out = tmp_path / "out"
    cmd = [str(SEG3D), "predict", "-i", str(tmp_path / "in"), "-o", str(out), "-m", str(model),
           "--engine", "ray", "--workers", "1", "--cpus-per-worker", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list(out.glob("case*.nii.gz"))) < 2 and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies; Ray's processes follow it
        proc.wait(timeout=30)
    finally:
        time.sleep(1)
        _end_session(proc)
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("case*.nii.gz")}
    assert 2 <= len(done) < 6
    res = _cli("predict", "-i", str(tmp_path / "in"), "-o", str(out), "-m", str(model), "--engine", "ray",
               "--workers", "1", "--cpus-per-worker", "2", "--continue")
    assert res.exit_code == 0, res.output
    assert {n: (out / n).stat().st_mtime_ns for n in done} == done  # nothing complete was written again
    status = {c["case"]: c["status"] for c in _manifest(out)["cases"]}
    assert status == {c: "skipped" if f"{c}.nii.gz" in done else "ok" for c in ids}
    assert sorted(os.listdir(out)) == sorted([f"{c}.nii.gz" for c in ids] + ["predict_manifest.json"])
    again = _cli("predict", "-i", str(tmp_path / "in"), "-o", str(out), "-m", str(model), "--engine", "ray",
                 "--continue")  # all complete: nothing to schedule, no worker started
    assert again.exit_code == 0 and "skipped 6" in again.output and "worker 0" not in again.output
    assert {c["status"] for c in _manifest(out)["cases"]} == {"skipped"} and _manifest(out)["ray"]["workers"] == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _can_unshare_mounts() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True,
                              timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@needs_ray
@pytest.mark.slow
def test_workers_that_cannot_see_the_output_folder_fail_before_any_work(tmp_path, model):
    """A Ray head whose processes see an empty tmpfs where the output folder is (a private mount namespace:
    a node without the shared mount); the CLI joins it with --ray-address and must refuse before any case."""
    if not _can_unshare_mounts():
        pytest.skip("needs `unshare -m` (mount namespaces) to give the workers a view without the output folder")
    _inputs(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    port = _free_port()
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    ray_bin = Path(sys.executable).parent / "ray"
    head = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && shift && exec "$@"',
         str(out), "x", str(ray_bin), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false",
         "--object-store-memory", str(100 * 1024 ** 2), "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None, "ray start --head failed"
            time.sleep(0.5)
        t0 = time.monotonic()
        res = subprocess.run([str(SEG3D), "predict", "-i", str(tmp_path / "in"), "-o", str(out), "-m", str(model),
                              "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", "--workers", "1",
                              "--cpus-per-worker", "1"], capture_output=True, text=True, timeout=300, check=False)
    finally:
        _end_session(head)
    text = res.stdout + res.stderr
    assert res.returncode == 1, text
    assert "sees a different output folder" in text and str(out) in text and "no case was started" in text
    assert "Traceback" not in text and time.monotonic() - t0 < 300
    assert os.listdir(out) == []  # no mask, no manifest, no probe file left behind
