"""What `seg3d predict` imports before its first case: start-up is paid once per command, per batch of cases."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata


def test_manifest_versions_do_not_import_monai():
    # importing MONAI for its version string cost 3-8 s of every seg3d predict on 2 cores
    code = ("import sys, json; from seg3d.inference.stages import versions; v = versions(); "
            "print(json.dumps({'monai_imported': 'monai' in sys.modules, 'v': v}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    res = json.loads(out.strip().splitlines()[-1])
    assert res["monai_imported"] is False
    assert res["v"]["monai"] == metadata.version("monai")
    assert res["v"]["torch"].split("+")[0] == metadata.version("torch").split("+")[0]
