"""What the commands print on stderr: adapt's own bars and log lines, nothing from the libraries.

Every command runs on the tiny model in one child process (so the libraries' own handlers
write to the real stderr, as for a user), each after a marker line; the test then reads every
command's stderr and allows only adapt's progress bars and ``INFO:`` lines, and with
``--quiet`` nothing at all.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

MARKER = "@@@ "
ADAPT_BARS = ("caching latents", "steps", "grid", "generating", "merging", "merging adapters", "svd-merge",
              "extracting", "inspecting", "resizing")
ALLOWED = re.compile(rf"^$|^INFO: |^({'|'.join(ADAPT_BARS)}): +\d+%\|")
# adapt's own warnings that these inputs cause, by command
EXPECTED = {"extract": re.compile(r"^WARNING: text encoder unchanged \(max \|diff\| .* <= --min_diff 0.01\): extracting the U-Net only$")}
NOISE = ("Loading weights", "Writing model shards", "Loading pipeline components", "[transformers]", "Warning",
         "warn", "torchvision", "deprecated")


def commands(root: Path) -> list[list[str]]:
    """``adapt`` argument lists that together use every command (the first trains the LoRA)."""
    model, single, lora = str(root / "model"), str(root / "tiny.safetensors"), str(root / "out" / "n.safetensors")
    out = str(root / "results")
    small = ["--W", "32", "--H", "32", "--steps", "2", "--seed", "1"]
    return [
        ["train", "--pretrained_model_name_or_path", model, "--train_data_dir", str(root / "data" / "img"),
         "--caption_extension", ".txt", "--resolution", "32", "--output_dir", str(root / "out"), "--output_name", "n",
         "--max_train_steps", "2", "--cache_latents", "--max_data_loader_n_workers", "0", "--save_every_n_steps", "1",
         "--sample_prompts", str(root / "prompts.txt"), "--sample_at_first", "--sample_every_n_steps", "2"],
        ["networks"],
        ["inspect", lora],
        ["check", lora, "--model", model],
        ["generate", "--model", single, "--network_weights", lora, "--prompt", "a cat", "--outdir", out, *small],
        ["grid", "--model", model, "--x", f"adapter={root}/out/n-step*.safetensors", "--y", "mul=0,1", "--prompt", "a",
         "--outdir", out, *small],
        ["merge", "--sd_model", single, "--models", lora, "--save_to", f"{out}/merged.safetensors"],
        ["merge", "--models", lora, lora, "--save_to", f"{out}/blend.safetensors"],
        ["svd-merge", "--models", lora, lora, "--lbws", "OUTS", "--new_rank", "2", "--save_to", f"{out}/svd.safetensors"],
        ["resize", "--model", lora, "--new_rank", "2", "--save_to", f"{out}/r2.safetensors"],
        ["extract", "--model_org", single, "--model_tuned", f"{out}/merged.safetensors", "--dim", "2",
         "--save_to", f"{out}/extracted.safetensors"],
        ["convert", lora, f"{out}/peft", "--to", "peft"],
        ["resize-images", str(root / "data" / "img" / "10_sks shape"), f"{out}/small", "--max_resolution", "16x16"],
        ["--quiet", "generate", "--model", model, "--network_weights", lora, "--prompt", "a", "--outdir", out, *small],
    ]


def drive(root: str) -> None:
    """Run in the child: write the inputs, then each command after a marker on stderr."""
    import torch

    from adapt_cli.main import main
    from adapters_core.models import write_tiny_model
    from adapters_core.train.dataset import write_demo_dataset

    torch.set_num_threads(1)
    folder = Path(root)
    write_tiny_model(folder / "model", single_file=folder / "tiny.safetensors")
    write_demo_dataset(folder / "data", n_images=2, size=32)
    (folder / "prompts.txt").write_text("sks shape --w 32 --h 32 --s 2 --d 1\n", encoding="utf-8")
    for argv in commands(folder):
        print(f"{MARKER}{' '.join(argv[:2])}", file=sys.stderr, flush=True)
        code = main(argv)
        print(f"{MARKER}exit {code}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def stderr_by_command(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("stderr")
    here = Path(__file__).parent
    child = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(here)!r}); "
                               f"from test_quiet_output import drive; drive({str(root)!r})"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900,
    )
    sections = child.stderr.split(MARKER)[1:]
    assert child.returncode == 0 and sections, child.stderr[-3000:]
    result = {}
    for start, end in zip(sections[0::2], sections[1::2]):
        name, _, text = start.partition("\n")
        assert end.strip() == "exit 0", f"{name}: {text[-2000:]}"
        result[name] = text
    assert len(result) == len(commands(root))
    return result


def test_every_command_prints_only_adapt_bars_and_log_lines(stderr_by_command: dict[str, str]) -> None:
    for name, text in stderr_by_command.items():
        expected = EXPECTED.get(name.split()[0], ALLOWED)
        unexpected = [line for line in re.split(r"[\r\n]", text) if not (ALLOWED.match(line.strip()) or
                                                                          expected.match(line.strip()))]
        assert not unexpected, (name, unexpected[:5])
        assert not any(noise in text for noise in NOISE if name.split()[0] not in EXPECTED), (name, text[:2000])


def test_quiet_prints_nothing_on_success(stderr_by_command: dict[str, str]) -> None:
    assert stderr_by_command["--quiet generate"] == ""
    assert "grid" in stderr_by_command["grid --model"]  # the normal level shows adapt's own bar
