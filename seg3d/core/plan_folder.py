"""The plan folder written by ``seg3d plan`` and read by ``seg3d preprocess`` / ``seg3d train``.

Layout::

    PLAN_DIR/
      plans.json          the plan (portable: it holds no path)
      fingerprint.json    the dataset fingerprint (reused while the dataset's files are unchanged)
      source.json         {"dataset_dir": "/abs/path"} (machine-specific, rewritten by `seg3d plan`)
      cache/<config>/     preprocessed cases (seg3d.preprocessing.cache)
      models/<config>_<arch>_<loss>/   model folders (seg3d.core.model_folder)
"""
from __future__ import annotations

import json
from pathlib import Path

from seg3d.atomic import write_json_atomic
from seg3d.errors import Seg3dError

PLANS_JSON = "plans.json"
FINGERPRINT_JSON = "fingerprint.json"
SOURCE_JSON = "source.json"
CACHE_MANIFEST = "manifest.json"


class PlanFolder:
    """Paths of a plan folder and where its dataset lives."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def plans_json(self) -> Path:
        return self.path / PLANS_JSON

    @property
    def fingerprint_json(self) -> Path:
        return self.path / FINGERPRINT_JSON

    @property
    def source_json(self) -> Path:
        return self.path / SOURCE_JSON

    def cache_dir(self, config: str) -> Path:
        return self.path / "cache" / config

    def default_model_dir(self, config: str, arch: str, loss: str) -> Path:
        """``PLAN_DIR/models/<config>_<arch>_<loss>``: one folder per trained variant, folds inside."""
        return self.path / "models" / f"{config}_{arch}_{loss}"

    def record_dataset(self, dataset_dir: str | Path) -> None:
        write_json_atomic(self.source_json, {"dataset_dir": str(Path(dataset_dir).resolve())})

    def recorded_dataset(self) -> str | None:
        """The dataset ``seg3d plan`` read (``source.json``, or ``extra.dataset_dir`` of an older plans.json)."""
        for path, get in ((self.source_json, lambda d: d.get("dataset_dir")),
                          (self.plans_json, lambda d: (d.get("extra") or {}).get("dataset_dir"))):
            try:
                value = get(json.loads(path.read_text()))
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(value, str) and value:
                return value
        return None

    def dataset_dir(self, given: str | Path | None = None, config: str | None = None) -> Path:
        """The dataset this plan was made for: ``given``, else recorded here, else recorded in the cache.

        Raises:
            Seg3dError: ``given`` is not a dataset folder, or nothing records one.
        """
        cands: list[str | Path | None] = [given, self.recorded_dataset()]
        if config is not None:
            try:
                cands.append(json.loads((self.cache_dir(config) / CACHE_MANIFEST).read_text()).get("dataset_root"))
            except (OSError, ValueError, AttributeError):
                pass
        for c in cands:
            if c and (Path(c) / "dataset.json").is_file():
                return Path(c).resolve()
        if given is not None:
            raise Seg3dError("not a dataset folder (no dataset.json)", given)
        raise Seg3dError(f"the dataset folder of this plan is unknown (no {SOURCE_JSON} and no cache records "
                         "it): pass it with --dataset", self.plans_json)
