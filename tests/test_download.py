"""`seg3d download msd` end to end against a local HTTP server (no outside network)."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from functools import partial

import numpy as np
import pytest

from seg3d.download import download_msd, resolve_task
from seg3d.errors import Seg3dError

SPACING, ORIGIN = (0.9, 1.1, 2.5), (4.0, -7.0, 12.5)
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _write_4d(path, channels):
    """A 4D NIfTI (x, y, z, channel) as the MSD stores multi-modal images."""
    import SimpleITK as sitk

    vols = []
    for arr in channels:
        v = sitk.GetImageFromArray(arr)
        v.SetSpacing(SPACING)
        v.SetOrigin(ORIGIN)
        v.SetDirection(DIRECTION)
        vols.append(v)
    sitk.WriteImage(sitk.JoinSeries(vols), str(path), useCompression=True)


@pytest.fixture(scope="module")
def msd_task(tmp_path_factory):
    """A 2-channel MSD-style mini task as a .tar (with macOS '._' junk like the real archives)."""
    import SimpleITK as sitk

    root = tmp_path_factory.mktemp("msd")
    task = root / "Task99_Mini"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for cid in ("mini_001", "mini_002", "mini_003"):
        chans = [rng.normal(size=(5, 6, 7)).astype(np.float32) for _ in range(2)]
        arrays[cid] = chans
        sub = "imagesTs" if cid == "mini_003" else "imagesTr"
        _write_4d(task / sub / f"{cid}.nii.gz", chans)
        if sub == "imagesTr":
            lab = sitk.GetImageFromArray((chans[0] > 0.5).astype(np.uint8))
            lab.SetSpacing(SPACING)
            lab.SetOrigin(ORIGIN)
            lab.SetDirection(DIRECTION)
            sitk.WriteImage(lab, str(task / "labelsTr" / f"{cid}.nii.gz"), useCompression=True)
    (task / "imagesTr" / "._mini_001.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    (task / "dataset.json").write_text(json.dumps({
        "name": "Mini", "description": "test", "reference": "here", "licence": "CC-BY-SA 4.0",
        "tensorImageSize": "4D", "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "tumour"}, "numTraining": 2, "numTest": 1,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                     for c in ("mini_001", "mini_002")],
        "test": ["./imagesTs/mini_003.nii.gz"]}))
    serve = root / "serve"
    serve.mkdir()
    with tarfile.open(serve / "Task99_Mini.tar", "w") as tar:
        tar.add(task, arcname="Task99_Mini")
    data = (serve / "Task99_Mini.tar").read_bytes()
    (serve / "truncated.tar").write_bytes(data[: len(data) * 2 // 3])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    (serve / "traversal.tar").write_bytes(buf.getvalue())
    return serve, arrays, task


@pytest.fixture(scope="module")
def server(msd_task):
    serve = msd_task[0]
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(serve))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_and_convert(msd_task, server, tmp_path):
    from seg3d.io.image import read_image
    from seg3d.io.layout import load_dataset

    serve, arrays, task = msd_task
    seen = []
    out = download_msd("Task99_Mini", tmp_path, url=f"{server}/Task99_Mini.tar",
                       md5=_md5(serve / "Task99_Mini.tar"), progress=lambda d, t, m: seen.append((d, t)))
    assert out == tmp_path / "Dataset099_Mini"
    assert seen and seen[-1][0] == seen[-1][1] == (serve / "Task99_Mini.tar").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset099_Mini"]  # no archive, no temp folder
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "FLAIR", "1": "T1w"}
    assert meta["labels"] == {"background": 0, "tumour": 1}
    assert meta["file_ending"] == ".nii.gz" and meta["numTraining"] == 2 and meta["licence"] == "CC-BY-SA 4.0"
    for sub, cid in (("imagesTr", "mini_001"), ("imagesTr", "mini_002"), ("imagesTs", "mini_003")):
        for c in range(2):
            img = read_image(out / sub / f"{cid}_{c:04d}.nii.gz")
            assert np.array_equal(img.array, arrays[cid][c])
            assert img.geometry.spacing == pytest.approx(SPACING)
            assert img.geometry.origin == pytest.approx(ORIGIN)
            assert img.geometry.direction == pytest.approx(DIRECTION)
    assert (out / "labelsTr" / "mini_001.nii.gz").read_bytes() == (task / "labelsTr" / "mini_001.nii.gz").read_bytes()
    ds = load_dataset(out)
    assert ds.layout == "nnunetv2" and len(ds.cases) == 2 and len(ds.test_cases) == 1 and not ds.problems
    with pytest.raises(Seg3dError, match="already exists"):
        download_msd("Task99_Mini", tmp_path, url=f"{server}/Task99_Mini.tar")


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    with pytest.raises(Seg3dError, match="checksum mismatch"):
        download_msd("Task99_Mini", tmp_path, url=f"{server}/Task99_Mini.tar", md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,message", [("truncated.tar", "corrupt|missing"), ("traversal.tar", "unsafe")])
def test_bad_archives_leave_no_half_extracted_dataset(msd_task, server, tmp_path, name, message):
    out = tmp_path / "out"
    with pytest.raises(Seg3dError, match=message):
        download_msd("Task99_Mini", out, url=f"{server}/{name}", md5=_md5(msd_task[0] / name))
    assert list(out.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


def test_unreachable_server_and_task_names(tmp_path):
    with pytest.raises(Seg3dError, match="download failed"):
        download_msd("Task99_Mini", tmp_path, url="http://127.0.0.1:9/none.tar")
    assert resolve_task("4") == resolve_task("hippocampus") == resolve_task("task04") == "Task04_Hippocampus"
    with pytest.raises(Seg3dError, match="unknown MSD task"):
        resolve_task("Task42_Nothing")


def test_cli_checksum_error_exit_code(server, tmp_path):
    from seg3d.cli.main import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["download", "msd", "Task99_Mini", "-o", str(tmp_path), "--url",
                                   f"{server}/Task99_Mini.tar", "--md5", "f" * 32])
    assert res.exit_code == 1 and "checksum mismatch" in res.output and "Traceback" not in res.output
