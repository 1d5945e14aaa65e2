"""seg3d.atomic: a write killed half-way leaves only a hidden part file, which partial_files finds."""
from __future__ import annotations

import os
import subprocess
import sys

from seg3d.atomic import atomic_path, partial_files


def test_a_killed_writer_leaves_only_a_part_file_that_partial_files_finds(tmp_path):
    target = tmp_path / "case1.nii.gz"
    code = ("import os, sys\nfrom seg3d.atomic import atomic_path\n"
            f"with atomic_path({str(target)!r}) as t:\n    t.write_bytes(b'half')\n    os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 9
    assert not target.exists()
    left = partial_files([target, tmp_path / "case1.npz"])
    assert len(left) == 1 and left[0].name.startswith(".case1.") and left[0].name.endswith(".part.nii.gz")
    # another case's part file (same prefix characters) and finished files are not reported
    with atomic_path(tmp_path / "case10.nii.gz") as t:
        t.write_bytes(b"whole")
    other = atomic_path(tmp_path / "case10.nii.gz")
    t10 = other.__enter__()
    t10.write_bytes(b"half")
    assert partial_files([target]) == left
    assert partial_files([tmp_path / "case10.nii.gz"]) == [t10]
    assert "case10.nii.gz" in os.listdir(tmp_path)
