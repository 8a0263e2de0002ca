"""The Python API on a diffusers pipeline: load adapters, apply, change multipliers, stack, merge.

Runs offline on the bundled tiny model:  .venv/bin/python examples/python_api.py
On a real model, replace the first lines with
    pipe = StableDiffusionPipeline.from_pretrained("/path/to/model", torch_dtype=torch.float16).to("cuda")
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from adapters_core.models import build_tiny_model, to_pipeline
from adapters_core.network import Network


def make_demo_adapters(folder: Path) -> tuple[Path, Path]:
    """Two adapter files with random weights (stand-ins for trained LoRAs)."""
    model = build_tiny_model()
    paths = []
    for index, network in enumerate(("lora", "c3lier")):
        net = Network.create(network, unet=model.unet, text_encoder=model.text_encoder, options={"network_dim": 4})
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.normal_(std=0.3, generator=torch.Generator().manual_seed(index))
        paths.append(folder / f"{network}.safetensors")
        net.save(paths[-1])
    return paths[0], paths[1]


def generate(pipe, seed: int = 0):
    return pipe("a photo of sks dog", num_inference_steps=2, height=32, width=32,
                generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


def main() -> None:
    pipe = to_pipeline(build_tiny_model())
    with tempfile.TemporaryDirectory() as folder:
        lora_path, c3lier_path = make_demo_adapters(Path(folder))
        before = generate(pipe)

        # 1. Create a network from a file for the pipeline's text encoder and U-Net, and apply it.
        style = Network.from_file(lora_path, unet=pipe.unet, text_encoder=pipe.text_encoder, multiplier=0.5)
        style.apply()
        with_style = generate(pipe)

        # 2. Change its multiplier without reloading.
        style.set_multiplier(1.0)
        stronger = generate(pipe)

        # 3. Stack a second network on the same layers, with its own multiplier.
        detail = Network.from_file(c3lier_path, unet=pipe.unet, text_encoder=pipe.text_encoder, multiplier=0.7).apply()
        stacked = generate(pipe)

        # 4. Merge both into the weights: same images, no patching overhead (multipliers now fixed).
        style.merge_to()
        detail.merge_to()
        merged = generate(pipe)

    print(f"mean |change| at multiplier 0.5: {abs(with_style - before).mean():.4f}")
    print(f"mean |change| at multiplier 1.0: {abs(stronger - before).mean():.4f}")
    print(f"mean |change| with two networks: {abs(stacked - before).mean():.4f}")
    print(f"max |merged - patched|: {abs(merged - stacked).max():.2e}")


if __name__ == "__main__":
    main()
