"""Every ``adapt`` command in a ``bash`` block of README.md and docs/ runs, on the tiny model.

The commands are read from the Markdown (backslash continuations joined, ``#`` comments
dropped) and run in order through ``adapt_cli.main.main`` in one sandbox folder that holds the
files the guide names (a tiny checkpoint as ``~/models/v1-5-pruned-emaonly.safetensors``,
random LoRAs as ``my_subject.safetensors`` ...). Only sizes and lengths are shrunk for a CPU
(:data:`SHRINK`), and the flags the guide itself says to drop without a GPU are dropped
(:data:`GPU_ONLY`). Set-up commands (git, venv, pip, the scripts) install software and are not
run here; :data:`NOT_RUN` names them, so a new one must be classified. The kohya table's flags
are checked against each command's real options.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from helpers import randomize

from adapt_cli.main import cli, main
from adapters_core.models import build_tiny_model, write_tiny_model
from adapters_core.network import Network
from adapters_core.train.dataset import write_demo_dataset

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = ("git clone", "python3 -m venv", "pip install", ".venv/bin/pip install", "bash scripts/")
ACCELERATE = "accelerate launch -m adapt_cli.main "
# flag -> value on a CPU (the guide's sizes are for SD 1.x on a GPU)
SHRINK = {"--W": "32", "--H": "32", "--steps": "2", "--max_train_epochs": "1", "--new_rank": "4", "--dim": "4",
          "--conv_dim": "2", "--new_conv_rank": "2", "--images_per_prompt": "1", "--batch_count": "1"}
GPU_ONLY = {"--mixed_precision": 1, "--xformers": 0, "--optimizer_type": 1}  # flag -> values it takes
EXTRA = {"quickstart": ["--max_train_steps", "3"]}


def fenced_commands(path: Path) -> list[tuple[str, str]]:
    """``(file:line, command)`` for every command of the file's ``bash`` blocks."""
    commands: list[tuple[str, str]] = []
    in_bash, pending, start = False, "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_bash = stripped == "```bash" and not in_bash
            continue
        if not in_bash:
            continue
        start = start if pending else number
        pending = f"{pending} {stripped}"
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        words = shlex.split(pending, comments=True)
        pending = ""
        if words:
            commands.append((f"{path.name}:{start}", shlex.join(words)))
    return commands


ALL = [c for doc in DOCS for c in fenced_commands(doc)]
RUN = [c for c in ALL if not c[1].startswith(NOT_RUN)]


def cpu_arguments(command: str, home: Path) -> list[str]:
    """The command's arguments for ``main``: launcher dropped, ``~`` expanded, sizes shrunk."""
    command = command.removeprefix(ACCELERATE).removeprefix("adapt ")
    tokens = [str(home) + t[1:] if t.startswith("~/") else t for t in shlex.split(command)]
    out: list[str] = []
    skip = 0
    for index, token in enumerate(tokens):
        if skip:
            skip -= 1
            continue
        if token in GPU_ONLY:
            skip = GPU_ONLY[token]
            continue
        if index and tokens[index - 1] in SHRINK:
            token = SHRINK[tokens[index - 1]]
        out.append(token)
    return out + EXTRA.get(out[0], []) if out else out


def _lora(model, path: Path, seed: int) -> None:
    network = Network.create("lora", unet=model.unet, text_encoder=model.text_encoder, options={"network_dim": 4})
    randomize(network, seed=seed, std=0.05).save(path)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory):
    """The files the guide names, made from the tiny model; cwd and HOME point into it."""
    root = tmp_path_factory.mktemp("docs")
    home = root / "home"
    (home / "models").mkdir(parents=True)
    write_tiny_model(root / "tiny", single_file=home / "models" / "v1-5-pruned-emaonly.safetensors")
    for name in ("v1-5-pruned-emaonly.safetensors", "v1-5.safetensors"):
        shutil.copy(home / "models" / "v1-5-pruned-emaonly.safetensors", root / name)
    write_tiny_model(root / "finetune", seed=1, single_file=root / "my-finetune.safetensors")
    model = build_tiny_model()
    for seed, name in enumerate(("my_subject", "style", "a", "b", "detail", "loras/my_subject-000001",
                                 "loras/my_subject-000002")):
        (root / name).parent.mkdir(exist_ok=True)
        _lora(model, root / f"{name}.safetensors", seed)
    for folder, count in (("train", 2), ("reg", 1)):
        write_demo_dataset(root / folder, n_images=count, size=64, seed=count)
    guide = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
    match = re.search(r"```toml\n(\[general\].*?)```", guide, re.DOTALL)
    assert match is not None, "docs/guide.md has no [general] toml example"
    toml = match.group(1)
    for old, new in (("/data/train/10_sks woman", root / "train/img/10_sks shape"),
                     ("/data/reg/1_woman", root / "reg/img/10_sks shape"), ("= 512", "= 64"),
                     ("min_bucket_reso = 256", "min_bucket_reso = 64"), ("max_bucket_reso = 1024", "max_bucket_reso = 128")):
        toml = toml.replace(old, str(new))
    (root / "my_subject.toml").write_text(toml, encoding="utf-8")
    (root / "prompts.txt").write_text("sks shape --w 32 --h 32 --s 2 --d 1\n", encoding="utf-8")
    previous, previous_home = Path.cwd(), os.environ.get("HOME")
    os.chdir(root)
    os.environ["HOME"] = str(home)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert main(["convert", "my_subject.safetensors", "pytorch_lora_weights.safetensors", "--to", "diffusers"]) == 0
    yield home
    torch.set_num_threads(threads)
    os.chdir(previous)
    if previous_home is not None:
        os.environ["HOME"] = previous_home


@pytest.mark.parametrize(("where", "command"), RUN, ids=[w for w, _ in RUN])
def test_documented_command_runs(sandbox: Path, where: str, command: str) -> None:
    assert command.startswith(("adapt ", ACCELERATE)), f"{where}: not an adapt command: {command}"
    code = main(cpu_arguments(command, sandbox))
    assert code == 0, f"{where}: {command} exited {code}"


def test_every_other_command_is_a_setup_step() -> None:
    others = {c.split()[0] for _, c in ALL if c.startswith(NOT_RUN)}
    assert others == {"git", "python3", "pip", ".venv/bin/pip", "bash"}, others
    assert len(RUN) >= 20  # the guide's commands were found


def test_the_kohya_table_names_real_flags() -> None:
    guide = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
    rows = [line.split(" | ") for line in guide[guide.index("## 11. Coming from kohya"):].splitlines()
            if line.startswith("| `")]
    assert len(rows) >= 10
    for cells in rows:
        match = re.search(r"`adapt ([a-z-]+)|adapt_cli\.main ([a-z-]+)", cells[1])
        assert match, cells[1]
        command = cli.commands[match.group(1) or match.group(2)]
        options = {o for p in command.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}
        flags = {f for f in re.findall(r"--[a-z_0-9]+", cells[2]) if f != "--help"}
        if command.name == "generate":  # prompt-line options, not flags
            flags -= {"--n", "--w", "--h", "--s", "--l", "--d", "--am"}
        assert flags <= options, (command.name, sorted(flags - options))
