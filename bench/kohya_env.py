"""kohya sd-scripts for the side-by-side benchmarks: where its source is, and its own venv.

sd-scripts is not a package: its source is a checkout named by ``--sd-scripts`` or the
``KOHYA_SD_SCRIPTS`` environment variable (default ``bench/.kohya``, ignored by git). The
bench creates ``bench/.kohya-venv`` (ignored) the first time, with kohya's requirements.txt
from the package registry (CPU torch; bitsandbytes, a CUDA library, left out), and runs
kohya's scripts there as subprocesses through bench/kohya_launch.py. Nothing of kohya's is
imported into adapt's environment.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DEFAULT_SD_SCRIPTS = BENCH / ".kohya"
DEFAULT_VENV = BENCH / ".kohya-venv"
LEFT_OUT = ("bitsandbytes", "-e ")  # a CUDA-only library; kohya's own package (on PYTHONPATH instead)
ADAPT = Path(sys.executable).with_name("adapt")


class KohyaUnavailable(Exception):
    """sd-scripts or its environment cannot be had here: the comparison is skipped."""


def find_sd_scripts(flag: str | None) -> Path:
    path = Path(flag or os.environ.get("KOHYA_SD_SCRIPTS") or DEFAULT_SD_SCRIPTS)
    if not (path / "networks" / "merge_lora.py").is_file():
        raise KohyaUnavailable(
            f"no kohya sd-scripts checkout at {path} (give --sd-scripts PATH or KOHYA_SD_SCRIPTS)"
        )
    return path


def requirements(sd_scripts: Path) -> list[str]:
    lines = (sd_scripts / "requirements.txt").read_text(encoding="utf-8").splitlines()
    kept = [line.split("#")[0].strip() for line in lines]
    return [line for line in kept if line and not line.startswith(LEFT_OUT)]


def ensure_venv(sd_scripts: Path, venv: Path = DEFAULT_VENV) -> Path:
    """The venv's python, creating the venv with kohya's requirements if it is not there."""
    python = venv / "bin" / "python"
    if python.is_file():
        return python
    print(f"creating {venv} with kohya's requirements (a few minutes, once)", flush=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "torch==2.13.0", "torchvision", *requirements(sd_scripts)],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise KohyaUnavailable(f"could not create {venv}: {' '.join(step[:4])} ...\n{done.stderr[-2000:]}")
    return python


def kohya_command(python: Path, sd_scripts: Path, script: str, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": str(sd_scripts)}
    return [str(python), str(BENCH / "kohya_launch.py"), str(sd_scripts / script), *args], env


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of a subprocess, imports and file I/O included:
    what a user waits for. On a loaded shared machine the CPU seconds are the steadier figure."""
    cpu, start = children_cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}")
    return seconds, children_cpu_seconds() - cpu


def kohya_or_skip(flag: str | None) -> tuple[Path, Path] | None:
    """(sd-scripts checkout, its venv's python), or None after printing why the comparison is skipped."""
    try:
        sd_scripts = find_sd_scripts(flag)
        return sd_scripts, ensure_venv(sd_scripts)
    except KohyaUnavailable as reason:
        print(f"skipped: {reason}")
        return None
