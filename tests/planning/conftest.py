"""Planning test fixtures: hand-built fingerprints, so rules are tested without reading images."""
from __future__ import annotations

import pytest

from seg3d.fingerprint import CaseFingerprint, ChannelStats, Fingerprint


def make_fingerprint(spacings, shapes, channel="MRI", relative_crop=1.0, labels=None) -> Fingerprint:
    labels = labels or {"background": 0, "a": 1}
    cases = tuple(CaseFingerprint(f"c{i:03d}", tuple(map(float, sp)), tuple(map(int, sh)), tuple(map(int, sh)),
                                  {0: 1000, 1: 100}) for i, (sp, sh) in enumerate(zip(spacings, shapes)))
    stats = ChannelStats(mean=50.0, std=200.0, median=40.0, min=-1000.0, max=3000.0, p00_5=-900.0, p99_5=1500.0)
    return Fingerprint("Test", (channel,), labels, cases, (stats,), relative_crop, "digest")


@pytest.fixture
def fingerprint():
    """``fingerprint(spacings, shapes, channel=..., relative_crop=...)`` -> a Fingerprint."""
    return make_fingerprint
