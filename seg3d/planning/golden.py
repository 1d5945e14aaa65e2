"""Golden plans: the 8 GB plans of the hippocampus data and the default phantom, kept in ``plans/golden/``.

A test recomputes them and fails on any difference, printing a diff, so every change of the planner's output
is reviewed. After an intended change, regenerate and commit the files::

    python -m seg3d.planning.golden --update            # both (hippocampus needs ../shared/data)
    python -m seg3d.planning.golden                     # only compare, print diffs, exit 1 on a change
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO / "plans" / "golden"
HIPPOCAMPUS = REPO.parent / "shared" / "data" / "Dataset004_Hippocampus"
VOLATILE = ("fingerprint_digest",)  # depends on file modification times, not on the planner


def comparable(plan_dict: dict) -> dict:
    """The plan as compared and stored: without fields that change when the same files are re-written."""
    return {k: v for k, v in plan_dict.items() if k not in VOLATILE}


def dumps(plan_dict: dict) -> str:
    return json.dumps(comparable(plan_dict), indent=2) + "\n"


def plan_diff(golden_path: Path, plan_dict: dict) -> str:
    """Unified diff between the stored golden plan and ``plan_dict`` ('' when identical)."""
    old = golden_path.read_text().splitlines(keepends=True) if golden_path.is_file() else []
    new = dumps(plan_dict).splitlines(keepends=True)
    return "".join(difflib.unified_diff(old, new, str(golden_path), "recomputed"))


def compute_phantom_plan(work: Path, workers: int | None = 0) -> dict:
    from seg3d.planning import plan_dataset
    from seg3d.synthetic import make_phantom_dataset

    data = make_phantom_dataset(work / "phantom", seed=0)
    return plan_dataset(data, work / "phantom_plan", preset="8gb", workers=workers).to_dict()


def compute_hippocampus_plan(work: Path, dataset: Path = HIPPOCAMPUS, workers: int | None = None) -> dict:
    from seg3d.planning import plan_dataset

    return plan_dataset(dataset, work / "hippocampus_plan", preset="8gb", workers=workers).to_dict()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--update", action="store_true", help="rewrite plans/golden/*.json with the current output")
    ap.add_argument("--hippocampus", type=Path, default=HIPPOCAMPUS, help="Dataset004_Hippocampus folder")
    args = ap.parse_args(argv)
    changed = False
    with tempfile.TemporaryDirectory() as tmp:
        plans = {"phantom_8gb": compute_phantom_plan(Path(tmp))}
        if (args.hippocampus / "dataset.json").is_file():
            plans["hippocampus_8gb"] = compute_hippocampus_plan(Path(tmp), args.hippocampus)
        else:
            print(f"skipping hippocampus: {args.hippocampus} not found", file=sys.stderr)
    for name, plan in plans.items():
        path = GOLDEN_DIR / f"{name}.json"
        diff = plan_diff(path, plan)
        if args.update:
            from seg3d.atomic import write_text_atomic

            write_text_atomic(path, dumps(plan))
            print(f"{path}: {'updated' if diff else 'unchanged'}")
        elif diff:
            changed = True
            print(diff)
        else:
            print(f"{path}: unchanged")
    return 1 if changed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
