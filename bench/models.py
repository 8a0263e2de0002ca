"""The models the benches run on, by ``--models`` name, built from their family's bundled
configs with random weights: the family's components (``family.build_components``), its LierLa
layer set, the U-Net's conditioning as the family makes it for training, and a single file in
the family's checkpoint layout (SD 1.x LDM, SDXL SGM) written tensor by tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapters_core.family import ModelFamily
from adapters_core.models.bundled import load_config, read_config


@dataclass(frozen=True)
class BenchModel:
    """A bench model: its family's registry name, a label for reports and its VAE's config
    (the families build only the adaptable components; a checkpoint also holds the VAE)."""

    family_name: str
    label: str
    vae_config: Callable[[], dict[str, Any]]

    @property
    def family(self) -> ModelFamily:
        from adapters_core.plugins import get_registry

        return get_registry().family(self.family_name)


def _sdxl_vae() -> dict[str, Any]:
    from adapt_sdxl.family import CONFIGS_DIR

    return read_config(CONFIGS_DIR / "sdxl_base", "vae")


MODELS = {
    "tiny": BenchModel("tiny", "tiny", partial(load_config, "tiny", "vae")),
    "sd15": BenchModel("sd1", "SD 1.5", partial(load_config, "sd_v1", "vae")),
    "sdxl": BenchModel("sdxl", "SDXL", _sdxl_vae),
}


def bench_model(name: str) -> BenchModel:
    if name not in MODELS:
        raise SystemExit(f"--models {name}: expected one of {', '.join(MODELS)}")
    return MODELS[name]


def build_components(
    model: BenchModel, device: str = "meta", dtype: torch.dtype = torch.float32
) -> dict[str, nn.Module]:
    """The family's components (text encoders and U-Net) created directly in ``dtype``: random
    weights on a real device, none on ``meta``."""
    from adapters_core.models.tiny import creating_modules

    with creating_modules("cpu", dtype):  # the family places the modules on ``device`` itself
        return model.family.build_components(device=device)


def lierla_shapes(model: BenchModel) -> dict[str, torch.Size]:
    """kohya module name -> weight shape of adapt's LierLa layers (on ``meta``: no weights):
    264 on SD 1.5 (192 U-Net, 72 text encoder), 986 on SDXL (722 U-Net, 72 + 192 text encoders)."""
    from adapters_core.network import Network
    from adapters_core.targets import layer_weight

    network = Network.create("lora", family=model.family, components=build_components(model))
    return {name: layer_weight(target.layer).shape for name, target in network.targets.items()}


def unet_conditioning(
    model: BenchModel, components: Mapping[str, nn.Module], latent: int, prompt: str = "a photo of a cat"
) -> dict[str, Any]:
    """The U-Net's keyword inputs for one caption, as the family makes them in training
    (``encode_text`` on the text encoders of ``components``, then ``unet_conditioning``):
    SD's ``encoder_hidden_states``; SDXL's also ``added_cond_kwargs`` with the pooled embedding
    and the six size numbers (an image of ``8 * latent`` px square). The tokenizer is the
    bundled tiny one (CLIP's tokenization, a short vocabulary)."""
    from transformers import CLIPTokenizer

    from adapters_core.models.bundled import TINY_TOKENIZER_DIR

    family = model.family
    tokenizer = CLIPTokenizer.from_pretrained(TINY_TOKENIZER_DIR, local_files_only=True)
    encoders = {name: components[name].eval() for name in family.text_encoder_names}
    with torch.no_grad():
        outputs = family.encode_text(
            encoders, dict.fromkeys(encoders, tokenizer), [prompt], max_token_length=None, clip_skip=None
        )
    size = (8 * latent, 8 * latent)
    return family.unet_conditioning(outputs, {"original_sizes": [size], "flipped": [False], "bucket_reso": size})


def move(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Floating-point tensors in a (nested) conditioning dict on ``device`` in ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype) if value.is_floating_point() else value.to(device)
    if isinstance(value, Mapping):
        return {key: move(item, device, dtype) for key, item in value.items()}
    return value


def write_checkpoint(model: BenchModel, path: Path, dtype: torch.dtype = torch.float16) -> dict[str, torch.Size]:
    """The model as a single file in its family's layout (U-Net, text encoders and VAE, random
    weights from seed 0, ``dtype``), written tensor by tensor (the model is held once: 6.9 GB
    for SDXL in fp16); returns its LierLa layer shapes."""
    from diffusers import AutoencoderKL

    from adapters_core.models.components import SDModel
    from adapters_core.models.tiny import creating_modules
    from adapters_core.ops.streaming import SafetensorsWriter

    family = model.family
    torch.manual_seed(0)  # the same weights in every run: output digests compare across runs
    components = build_components(model, "cpu", dtype)
    with creating_modules("cpu", dtype):
        vae = AutoencoderKL.from_config(model.vae_config())
    sd_model = SDModel(family, components, vae, {}, {}, v_parameterization=False, source=path)
    state = {key: tensor.contiguous() for key, tensor in family.checkpoint_state_dict(sd_model).items()}
    del components, vae, sd_model
    specs = [(key, tensor.dtype, tensor.shape) for key, tensor in state.items()]
    with SafetensorsWriter(path, specs) as writer:
        for key in list(state):
            writer.write(key, state.pop(key))
    return lierla_shapes(model)
