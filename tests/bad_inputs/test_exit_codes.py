"""Exit codes reach the shell: ``adapt check`` exits 1 when keys load nowhere and 0 on a good
file through ``main()``; through the installed console script (whose entry point once dropped
the command's return value) 1, 2 for a usage error and 0 for help. The console script runs only
where a code other than 0 is the point, or where it is fast: each start imports torch."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from bad_input_table import Inputs

from adapt_cli.main import main

ADAPT = Path(sys.executable).parent / "adapt"


def check_argv(inputs: Inputs, name: str) -> list[str]:
    return ["check", str(inputs / name), "--model", str(inputs / "model"), "--summary"]


@pytest.mark.parametrize(("name", "code"), [("unmatched.safetensors", 1), ("lora.safetensors", 0)])
def test_check_exit_code_in_process(inputs: Inputs, name: str, code: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(check_argv(inputs, name)) == code
    out = capsys.readouterr().out
    assert ("lora_unet_no_such_block_proj" in out) == (code == 1)


@pytest.mark.skipif(not ADAPT.exists(), reason="the console script is not installed beside this Python")
@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (lambda inputs: check_argv(inputs, "unmatched.safetensors"), 1),
        (lambda inputs: ["merge", "--models", str(inputs / "lora.safetensors"), "--ratios", "nan", "--save_to", "o"],
         2),
        (lambda inputs: ["check", "--help"], 0),
    ],
    ids=["check-unmatched", "usage-error", "help"],
)
def test_console_script_exit_code(
    inputs: Inputs, argv: Callable[[Inputs], list[str]], code: int, tmp_path: Path
) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(ADAPT), *argv(inputs)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False
    )
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    if code == 2:
        assert done.stderr.startswith("adapt: error: --ratios") and done.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
