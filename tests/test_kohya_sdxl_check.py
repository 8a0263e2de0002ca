"""kohya sd-scripts' ``networks/lora.py`` loads adapt's SDXL LierLa file strictly and gives the same
module outputs (bench/kohya_sdxl_check.py, run as a user runs it). Only where a sd-scripts checkout
and its venv exist (bench/kohya_env.py: bench/.kohya or $KOHYA_SD_SCRIPTS, bench/.kohya-venv);
skipped elsewhere, as in CI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
from kohya_env import DEFAULT_VENV, KohyaUnavailable, find_sd_scripts  # noqa: E402


def kohya_missing() -> str:
    try:
        find_sd_scripts(None)
    except KohyaUnavailable as reason:
        return str(reason)
    return "" if (DEFAULT_VENV / "bin" / "python").is_file() else f"no kohya venv at {DEFAULT_VENV}"


@pytest.mark.skipif(bool(kohya_missing()), reason=kohya_missing() or "kohya is here")
def test_kohya_loads_adapts_sdxl_lierla_file_with_the_same_outputs(tmp_path: Path) -> None:
    command = [sys.executable, str(BENCH / "kohya_sdxl_check.py"), "--networks", "lierla", "--for-inference", "true",
               "--workdir", str(tmp_path)]  # the LoRAInfModule kohya's generation scripts load files with
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("lierla (")]
    assert len(lines) == 1 and lines[0].startswith("lierla (LoRAInfModule, for_inference=True)"), done.stdout
    line = lines[0]
    assert "kohya made 986 modules {'U-Net': 722, 'TE1': 72, 'TE2': 192}, fresh create_network 986" in line
    assert "strict load: 0 missing, 0 unexpected" in line
    found = re.search(r"max relative delta error (\S+)", line)
    assert found is not None and float(found.group(1)) <= 1e-5, line
    assert done.stdout.rstrip().endswith("kohya loads adapt's SDXL files: yes, same outputs")
