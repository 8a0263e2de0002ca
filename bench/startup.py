"""Start-up cost of the CLI against the import of the libraries it is built on.

Each command is run as a fresh process (as a user runs it), interleaved with the peer
``python -c "import diffusers, transformers"``, ``--rounds`` times; the medians and their ratios
are printed. Goals (issue "Speed"): ``adapt --help`` <= 0.1x and an error for a missing file
<= 0.2x the peer.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/startup.py --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEER = [sys.executable, "-c", "import diffusers, transformers"]
ADAPT = [sys.executable, "-m", "adapt_cli.main"]
CASES: dict[str, list[str]] = {
    "adapt --help": ["--help"],
    "adapt merge --help": ["merge", "--help"],
    "adapt train --help": ["train", "--help"],
    "missing file (merge)": ["merge", "--models", "missing.safetensors", "--save_to", "out.safetensors"],
    "bad value (train --network_dim 0)": ["train", "--network_dim", "0"],
    "adapt networks": ["networks"],
    "adapt inspect LORA": ["inspect", "{lora}"],
    "adapt check LORA": ["check", "{lora}"],
}


def write_lora(folder: Path) -> Path:
    """An SD 1.5 LierLa file (rank 4, as `adapt train` creates it) for the inspect/check cases."""
    from adapters_core.formats import save_adapter
    from adapters_core.network import Network
    from adapters_core.plugins import get_registry

    family = get_registry().family("sd1")
    network = Network.create("lora", family=family, components=family.build_components(device="cpu"))
    path = folder / "lora.safetensors"
    save_adapter(path, network.state_dict(), metadata={"ss_base_model_version": "sd_v1"})
    return path


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    lora = write_lora(Path(tempfile.mkdtemp(prefix="adapt-startup-")))
    wall(PEER)  # warm the file cache once
    peer: list[float] = []
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.rounds):
        peer.append(wall(PEER))
        for name, argv in CASES.items():
            times[name].append(wall([*ADAPT, *(item.format(lora=lora) for item in argv)]))
    base = statistics.median(peer)
    print(f"peer: import diffusers, transformers  {base * 1000:8.0f} ms (median of {args.rounds})")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<36} {median * 1000:8.0f} ms  ratio {median / base:.3f}")
    print(f"(python {sys.version.split()[0]}, cwd {Path.cwd()})")


if __name__ == "__main__":
    main()
