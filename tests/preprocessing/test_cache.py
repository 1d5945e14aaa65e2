"""build_cache / CaseCache: contents, reuse, resumability, corruption detection and rebuild, plan changes."""
from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import replace

import numpy as np
import pytest

from seg3d.io.layout import load_dataset, read_case_images, read_case_label
from seg3d.preprocessing import preprocess_case
from seg3d.preprocessing.cache import MAX_FG_LOCATIONS, CaseCache, build_cache


@pytest.fixture
def cache(phantom_dir, tiny_plan, tmp_path):
    events = []
    c = build_cache(phantom_dir, tiny_plan, "3d_fullres", tmp_path / "cache", workers=0,
                    progress=lambda d, t, m: events.append((d, t)))
    assert events[-1][0] == events[-1][1] == len(c.case_ids)
    return c


def test_entries_match_preprocess_case(cache, phantom_dir, tiny_plan):
    ds = load_dataset(phantom_dir)
    assert set(cache.case_ids) == {c.case_id for c in ds.cases}
    case = ds.cases[0]
    data, geo = read_case_images(case, 1)
    seg, _ = read_case_label(case)
    pdata, pseg, props = preprocess_case(data, geo, tiny_plan, tiny_plan.config("3d_fullres"), seg=seg)
    d, s, fg = cache.load(case.case_id)
    np.testing.assert_array_equal(d, pdata)
    np.testing.assert_array_equal(s, pseg)
    assert cache.properties(case.case_id) == props
    for c in (1, 2, 3):
        loc = fg[c]
        assert loc.shape[1] == 3 and 0 < len(loc) <= MAX_FG_LOCATIONS
        assert np.all(s[0][tuple(loc.T)] == c)  # every stored location is of its class
        assert len(loc) == min(MAX_FG_LOCATIONS, int((s == c).sum()))


def test_reuse_without_rebuild_and_resume(cache, phantom_dir, tiny_plan):
    d = cache.cache_dir
    mtimes = {p.name: p.stat().st_mtime_ns for p in d.glob("*.npy")}
    victim = cache.case_ids[1]
    (d / f"{victim}.json").unlink()  # an interrupted build leaves an entry without its JSON
    build_cache(phantom_dir, tiny_plan, "3d_fullres", d, workers=0)
    after = {p.name: p.stat().st_mtime_ns for p in d.glob("*.npy")}
    rebuilt = {n for n in after if after[n] != mtimes.get(n)}
    assert rebuilt == {f"{victim}_data.npy", f"{victim}_seg.npy"}


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip_bytes"])
def test_corrupt_entry_is_rebuilt_with_warning(cache, damage):
    cid = cache.case_ids[0]
    good = [np.array(a) for a in cache.load(cid)[:2]]
    path = cache.cache_dir / f"{cid}_data.npy"
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(raw)))
    else:  # same size, valid header, wrong payload: only the checksum can tell
        path.write_bytes(raw[:-64] + bytes(64))
    fresh = CaseCache(cache.cache_dir)
    with pytest.warns(UserWarning, match="damaged"):
        d, s, fg = fresh.load(cid)
    np.testing.assert_array_equal(d, good[0])
    np.testing.assert_array_equal(s, good[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CaseCache(cache.cache_dir).load(cid)  # repaired on disk


def test_plan_change_rebuilds(cache, phantom_dir, tiny_plan):
    d = cache.cache_dir
    old_shape = cache.load(cache.case_ids[0])[0].shape
    cfg = replace(tiny_plan.config("3d_fullres"), spacing=(3.0, 2.0, 2.0))
    plan2 = tiny_plan.with_config(cfg)
    c2 = build_cache(phantom_dir, plan2, "3d_fullres", d, workers=0)
    new_shape = c2.load(c2.case_ids[0])[0].shape
    assert new_shape[2] < old_shape[2] and new_shape[3] < old_shape[3]
    assert json.loads((d / "manifest.json").read_text())["plan_hash"] != ""


def test_parallel_build_equals_serial(phantom_dir, tiny_plan, tmp_path):
    a = build_cache(phantom_dir, tiny_plan, "3d_fullres", tmp_path / "a", workers=0)
    b = build_cache(phantom_dir, tiny_plan, "3d_fullres", tmp_path / "b", workers=2)
    for cid in a.case_ids[:3]:
        np.testing.assert_array_equal(a.load(cid)[1], b.load(cid)[1])


def test_missing_source_on_corruption_is_a_clear_error(cache, phantom_dir, tmp_path):
    from seg3d.errors import Seg3dError

    moved = tmp_path / "copy"
    shutil.copytree(cache.cache_dir, moved)
    man = json.loads((moved / "manifest.json").read_text())
    man["dataset_root"] = str(tmp_path / "gone")
    (moved / "manifest.json").write_text(json.dumps(man))
    cid = cache.case_ids[0]
    (moved / f"{cid}_seg.npy").write_bytes(b"junk")
    with pytest.warns(UserWarning), pytest.raises(Seg3dError, match="damaged"):
        CaseCache(moved).load(cid)
