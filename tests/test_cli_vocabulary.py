"""One CLI vocabulary: -m/--model where a model folder is read, -o/--output where something is written,
--folds in train and predict, -w/--workers where work is parallel; old spellings still work, with a note."""
from __future__ import annotations

import re

import pytest
from seg3d.cli.main import app
from typer.testing import CliRunner


def _help(*cmd: str) -> str:
    res = CliRunner().invoke(app, [*cmd, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return re.sub(r"\s+", " ", res.output)


@pytest.mark.parametrize("cmd", [("predict",), ("evaluate",), ("summary",), ("decide-postprocessing",)])
def test_the_model_folder_is_dash_m_model(cmd):
    text = _help(*cmd)
    assert "--model" in text and "-m" in text and "--model-dir" not in text and "--models" not in text


@pytest.mark.parametrize("cmd,options", [(("train",), ("--folds", "-o", "-w", "--threads")),
                                         (("predict",), ("--folds", "-o", "-i", "--threads", "--backend")),
                                         (("plan",), ("-o", "-w", "--arch")), (("check",), ("-w",)),
                                         (("evaluate",), ("-o", "-w")), (("demo",), ("-o", "-w")),
                                         (("preprocess",), ("-w",))])
def test_shared_option_names(cmd, options):
    text = _help(*cmd)
    for o in options:
        assert f"{o} " in text or f"{o}," in text, (cmd, o)
    assert "--fold " not in text  # hidden old spelling


def test_old_spellings_work_with_a_deprecation_note(tmp_path):
    res = CliRunner().invoke(app, ["train", str(tmp_path / "no_plan"), "--fold", "0"])
    assert res.exit_code == 1 and "--fold is deprecated" in res.output and "plan not found" in res.output
    res = CliRunner().invoke(app, ["train", str(tmp_path / "no_plan"), "--folds", "0", "1", "x"])
    assert res.exit_code == 2 and "unexpected argument(s): x" in res.output
    res = CliRunner().invoke(app, ["train", str(tmp_path / "no_plan"), "--folds", "all-available"])
    assert res.exit_code == 1 and "all-available is for predict" in res.output
    res = CliRunner().invoke(app, ["summary", str(tmp_path / "nope")])
    assert "model folder as an argument is deprecated" in res.output and "model folder not found" in res.output
    res = CliRunner().invoke(app, ["summary"])
    assert res.exit_code == 2 and "-m/--model" in res.output
    res = CliRunner().invoke(app, ["summary", "--models", str(tmp_path / "nope")])
    assert "--models is deprecated" in res.output and res.exit_code == 1
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path), str(tmp_path), "-o", str(tmp_path / "r"),
                                   "--model-dir", str(tmp_path / "nope")])
    assert "--model-dir is deprecated" in res.output and res.exit_code == 1
