"""The runner tests reuse the inference tests' helpers (tiny model folders, cases with oblique geometry)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
