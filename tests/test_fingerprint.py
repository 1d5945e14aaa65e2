"""The fingerprint: values against a direct numpy computation, JSON round trip, cache reuse and invalidation."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from seg3d import fingerprint as fpm
from seg3d.errors import Seg3dError
from seg3d.fingerprint import Fingerprint, compute_fingerprint, scan_dataset
from seg3d.io.image import Reorientation, read_image, write_image
from seg3d.preprocessing.crop import crop_to_nonzero


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory) -> Path:
    """Phantoms where every third case is stored with permuted axes (reorientation matters)."""
    from seg3d.synthetic import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("fp") / "ds", num_cases=6, seed=5, shape=(10, 28, 28),
                                mixed_orientation=True)


@pytest.fixture
def ds(mixed_dir, tmp_path) -> Path:
    return Path(shutil.copytree(mixed_dir, tmp_path / "ds"))


def _direct(ds: Path):
    """The fingerprint computed the obvious way, from the same files, with the shared crop code."""
    cases, fg_values, permuted = {}, [], 0
    for p in sorted((ds / "imagesTr").glob("*_0000.nii.gz")):
        cid = p.name[: -len("_0000.nii.gz")]
        img, lab = read_image(p), read_image(ds / "labelsTr" / f"{cid}.nii.gz")
        r = Reorientation.to_canonical(img.geometry)
        permuted += r.perm != (0, 1, 2)
        data, seg = r.apply(img.array)[None], r.apply(lab.array)
        cropped, cseg, _, _ = crop_to_nonzero(data, seg)
        values, counts = np.unique(lab.array, return_counts=True)
        cases[cid] = {"spacing": r.geometry(img.geometry).spacing_zyx, "shape": data.shape[1:],
                      "cropped_shape": cropped.shape[1:],
                      "class_voxels": dict(zip(values.tolist(), counts.tolist()))}
        fg_values.append(cropped[0][cseg > 0].astype(np.float64))
    assert permuted, "the test data must hold cases stored with permuted axes"
    return cases, np.concatenate(fg_values)


def test_fingerprint_matches_direct_computation(ds):
    fp = compute_fingerprint(ds, workers=0)
    cases, fg = _direct(ds)
    assert [c.case_id for c in fp.cases] == sorted(cases)
    for c in fp.cases:
        exp = cases[c.case_id]
        np.testing.assert_allclose(c.spacing, exp["spacing"], rtol=1e-6)
        assert c.shape == tuple(exp["shape"])
        assert c.cropped_shape == tuple(exp["cropped_shape"])
        assert c.cropped_shape != c.shape  # the phantom body is zero outside: cropping must bite
        assert c.class_voxels == exp["class_voxels"]
    # canonical order: the thick (3 mm) axis is first for every case, also the ones stored permuted
    assert np.all(fp.spacings[:, 0] > fp.spacings[:, 1])
    s = fp.channel_stats[0]
    np.testing.assert_allclose([s.mean, s.std, s.min, s.max], [fg.mean(), fg.std(), fg.min(), fg.max()],
                               rtol=1e-6)
    np.testing.assert_allclose([s.p00_5, s.median, s.p99_5], np.percentile(fg, [0.5, 50, 99.5]), rtol=1e-5)
    rel = [np.prod(v["cropped_shape"]) / np.prod(v["shape"]) for v in cases.values()]
    assert fp.median_relative_cropped_size == pytest.approx(float(np.median(rel)))
    assert fp.median_spacing == tuple(np.median([v["spacing"] for v in cases.values()], axis=0))
    assert fp.median_cropped_shape == tuple(np.median([v["cropped_shape"] for v in cases.values()], axis=0))
    assert fp.class_voxels[1] == sum(v["class_voxels"].get(1, 0) for v in cases.values())


def test_workers_give_the_same_fingerprint(ds):
    assert compute_fingerprint(ds, workers=2) == compute_fingerprint(ds, workers=0)


def test_samples_are_capped_and_deterministic(ds, monkeypatch):
    full = compute_fingerprint(ds, workers=0)
    monkeypatch.setattr(fpm, "MAX_TOTAL_SAMPLES", 6 * 200)  # 200 foreground samples per case
    a, b = compute_fingerprint(ds, workers=0), compute_fingerprint(ds, workers=0)
    assert a == b
    sa, sf = a.channel_stats[0], full.channel_stats[0]
    assert (sa.mean, sa.std, sa.min, sa.max) == (sf.mean, sf.std, sf.min, sf.max)  # exact, not sampled
    assert sa.median != sf.median and abs(sa.median - sf.median) < 0.1 * sf.std  # sampled, yet close
    m = fpm.measure_case("x", _voxels(ds, "phantom_000"), max_samples=50)  # the cap applies per case
    assert m.samples[0].shape == (50,) and m.moments[0][0] > 50


def _voxels(ds: Path, cid: str):
    from seg3d.io.checks import CaseSpec, inspect_case
    from seg3d.io.layout import load_dataset

    d = load_dataset(ds)
    case = next(c for c in d.cases if c.case_id == cid)
    problems, vox = inspect_case(case, CaseSpec(d.channel_names, d.label_values), keep_voxels=True)
    assert not problems
    return vox


def test_json_round_trip(ds, tmp_path):
    fp = compute_fingerprint(ds, workers=0)
    fp.save(tmp_path / "fingerprint.json")
    d = json.loads((tmp_path / "fingerprint.json").read_text())  # plain JSON, readable
    assert d["cases"][0]["class_voxels"] and isinstance(d["channel_stats"][0]["mean"], float)
    assert Fingerprint.load(tmp_path / "fingerprint.json") == fp
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(Seg3dError, match="bad.json"):
        Fingerprint.load(tmp_path / "bad.json")


def test_cache_is_reused_until_a_file_changes(ds, tmp_path):
    cache = tmp_path / "out" / "fingerprint.json"
    messages = []

    def progress(done, total, msg):
        messages.append(msg)

    first = compute_fingerprint(ds, workers=0, cache_path=cache)
    assert cache.is_file()
    second = compute_fingerprint(ds, workers=0, cache_path=cache, progress=progress)
    assert second == first and any("reusing" in m for m in messages)

    # same content, new modification time: measured again (digest changes, values do not)
    lab = ds / "labelsTr/phantom_002.nii.gz"
    st = lab.stat()
    os.utime(lab, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    messages.clear()
    third = compute_fingerprint(ds, workers=0, cache_path=cache, progress=progress)
    assert not any("reusing" in m for m in messages)
    assert third.digest != first.digest and third.cases == first.cases
    assert Fingerprint.load(cache).digest == third.digest

    # new content: the changed case is measured again
    img = read_image(lab)
    arr = img.array.copy()
    arr[arr == 1] = 2
    write_image(arr, img.geometry, lab)
    fourth = compute_fingerprint(ds, workers=0, cache_path=cache)
    c = next(c for c in fourth.cases if c.case_id == "phantom_002")
    assert c.class_voxels.get(1, 0) == 0 and fourth.digest != third.digest


def test_broken_dataset_raises_naming_the_file(ds, tmp_path):
    lab = ds / "labelsTr/phantom_001.nii.gz"
    img = read_image(lab)
    write_image(img.array.astype(np.float32) + 0.5, img.geometry, lab)
    problems, fp = scan_dataset(ds, workers=0, cache_path=tmp_path / "fp.json")
    assert fp is None and not (tmp_path / "fp.json").exists()
    assert any(p.path == lab and "non-integer" in p.message for p in problems)
    with pytest.raises(Seg3dError, match="phantom_001.nii.gz.*non-integer"):
        compute_fingerprint(ds, workers=0)


def test_msd_dataset_fingerprint_has_one_stats_entry_per_channel(tmp_path):
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    training = []
    for i in range(3):
        lab = np.zeros((6, 8, 10), np.uint8)
        lab[2:4, 3:6, 4:8] = 1
        chans = [sitk.GetImageFromArray(rng.normal(100 * (k + 1), 5, lab.shape).astype(np.float32))
                 for k in range(2)]
        sitk.WriteImage(sitk.JoinSeries(chans), str(tmp_path / f"imagesTr/c{i}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(lab), str(tmp_path / f"labelsTr/c{i}.nii.gz"))
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps({
        "modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "tumour"},
        "numTraining": 3, "training": training}))
    fp = compute_fingerprint(tmp_path, workers=0)
    assert fp.channel_names == ("FLAIR", "T1w") and len(fp.channel_stats) == 2
    assert fp.channel_stats[0].mean == pytest.approx(100, abs=2) and fp.channel_stats[1].mean == pytest.approx(200, abs=2)
    assert all(c.shape == (6, 8, 10) and c.class_voxels == {0: 480 - 24, 1: 24} for c in fp.cases)


def test_hippocampus_fingerprint(hippocampus_dir, tmp_path):
    fp = compute_fingerprint(hippocampus_dir, workers=2, cache_path=tmp_path / "fingerprint.json")
    assert len(fp.cases) == 195 and fp.channel_names == ("MRI",)
    assert fp.median_spacing == (1.0, 1.0, 1.0)
    assert fp.class_voxels[1] > 0 and fp.class_voxels[2] > 0
    assert all(c.class_voxels.get(1, 0) > 0 for c in fp.cases)
    assert 30 <= fp.median_shape[0] <= 40 and fp.median_relative_cropped_size <= 1.0
    s = fp.channel_stats[0]
    assert s.min <= s.p00_5 <= s.median <= s.p99_5 <= s.max and s.std > 0


def test_layout_problem_stops_the_fingerprint(ds):
    shutil.rmtree(ds / "labelsTr")
    problems, fp = scan_dataset(ds, workers=0)
    assert fp is None and len(problems) == 1 and "labelsTr" in str(problems[0])
