"""State-dict conversion between the Diffusers layout and the original LDM (CompVis) layout.

One key table per component is built from the model's structure (levels, layers per block,
which blocks have attention) and read in both directions, so any depth round-trips exactly,
the 2-level tiny model as well as the 4-level SD U-Net. The mapping follows
``reference/kohya-format.md`` §13. Tensors are never copied except where the layouts differ:
VAE attention (1x1 conv in LDM, Linear in Diffusers), U-Net ``proj_in``/``proj_out`` (either,
chosen by ``use_linear_projection``) and the SD2 text encoder's fused ``in_proj`` (q/k/v).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from adapters_core.errors import FormatError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TE_V1_PREFIX = "cond_stage_model.transformer."
TE_V2_PREFIX = "cond_stage_model.model."

StateDict = dict[str, torch.Tensor]

# Renames inside one resnet (Diffusers name -> LDM name).
_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}
_VAE_RESNET = {
    "norm1.": "norm1.",
    "conv1.": "conv1.",
    "norm2.": "norm2.",
    "conv2.": "conv2.",
    "conv_shortcut.": "nin_shortcut.",
}
_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}
# OpenCLIP (SD2) names inside one transformer layer, except the fused q/k/v.
_OPENCLIP_LAYER = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
    "self_attn.out_proj.": "attn.out_proj.",
}
_OPENCLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
# OpenCLIP tensors with no place in the HF text encoder (carried over from a template on save).
_OPENCLIP_UNUSED = ("text_projection", "logit_scale", "attn_mask")


class KeyMap:
    """Prefix renames (with optional renames of what follows the prefix), in both directions."""

    def __init__(self, entries: Iterable[tuple[str, str, Mapping[str, str] | None]]) -> None:
        self._forward: dict[str, tuple[str, Mapping[str, str] | None]] = {}
        self._backward: dict[str, tuple[str, Mapping[str, str] | None]] = {}
        for diffusers_prefix, ldm_prefix, inner in entries:
            inverse = {v: k for k, v in inner.items()} if inner is not None else None
            self._forward[diffusers_prefix] = (ldm_prefix, inner)
            self._backward[ldm_prefix] = (diffusers_prefix, inverse)

    def to_ldm(self, key: str) -> str | None:
        """The LDM name of a Diffusers key, or None if the table has no entry for it."""
        return self._rename(key, self._forward)

    def from_ldm(self, key: str) -> str | None:
        """The Diffusers name of an LDM key (without the component prefix), or None."""
        return self._rename(key, self._backward)

    @staticmethod
    def _rename(key: str, table: Mapping[str, tuple[str, Mapping[str, str] | None]]) -> str | None:
        parts = key.split(".")
        for n in range(1, len(parts)):
            prefix = ".".join(parts[:n]) + "."
            if prefix not in table:
                continue
            new_prefix, inner = table[prefix]
            rest = key[len(prefix) :]
            if inner is None:
                return new_prefix + rest
            for old, new in inner.items():
                if rest.startswith(old):
                    return new_prefix + new + rest[len(old) :]
            return None
        return None


@dataclass(frozen=True)
class UNetLayout:
    """The structure of a UNet2DConditionModel that decides the LDM block numbering."""

    levels: int
    layers_per_block: int
    down_attention: tuple[bool, ...]
    up_attention: tuple[bool, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UNetLayout:
        layers = config["layers_per_block"]
        if not isinstance(layers, int):
            raise FormatError(f"U-Net config layers_per_block={layers!r}: expected one integer")
        return cls(
            levels=len(config["block_out_channels"]),
            layers_per_block=layers,
            down_attention=tuple(t.startswith("CrossAttn") for t in config["down_block_types"]),
            up_attention=tuple(t.startswith("CrossAttn") for t in config["up_block_types"]),
        )

    @classmethod
    def from_diffusers_keys(cls, keys: Iterable[str]) -> UNetLayout:
        """Read the structure off a Diffusers U-Net state dict (when no config is at hand)."""
        keys = list(keys)
        levels = _count(keys, "down_blocks.")
        if levels == 0:
            raise FormatError("U-Net state dict: no down_blocks.* keys; expected a Diffusers U-Net")
        return cls(
            levels=levels,
            layers_per_block=_count(keys, "down_blocks.0.resnets."),
            down_attention=tuple(_count(keys, f"down_blocks.{b}.attentions.") > 0 for b in range(levels)),
            up_attention=tuple(_count(keys, f"up_blocks.{b}.attentions.") > 0 for b in range(levels)),
        )

    def key_map(self) -> KeyMap:
        """The Diffusers <-> LDM key table of this U-Net (keys without ``model.diffusion_model.``)."""
        entries: list[tuple[str, str, Mapping[str, str] | None]] = [
            ("time_embedding.linear_1.", "time_embed.0.", None),
            ("time_embedding.linear_2.", "time_embed.2.", None),
            # SDXL's size/pooled-text embedding (addition_embed_type text_time)
            ("add_embedding.linear_1.", "label_emb.0.0.", None),
            ("add_embedding.linear_2.", "label_emb.0.2.", None),
            ("conv_in.", "input_blocks.0.0.", None),
            ("conv_norm_out.", "out.0.", None),
            ("conv_out.", "out.2.", None),
            ("mid_block.resnets.0.", "middle_block.0.", _UNET_RESNET),
            ("mid_block.attentions.0.", "middle_block.1.", None),
            ("mid_block.resnets.1.", "middle_block.2.", _UNET_RESNET),
        ]
        stride = self.layers_per_block + 1  # LDM input/output blocks per level
        last = self.levels - 1
        for b in range(self.levels):
            for n in range(self.layers_per_block):
                i = 1 + b * stride + n
                entries.append((f"down_blocks.{b}.resnets.{n}.", f"input_blocks.{i}.0.", _UNET_RESNET))
                if self.down_attention[b]:
                    entries.append((f"down_blocks.{b}.attentions.{n}.", f"input_blocks.{i}.1.", None))
            if b < last:
                i = 1 + b * stride + self.layers_per_block
                entries.append((f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{i}.0.op.", None))
            for n in range(stride):
                i = b * stride + n
                entries.append((f"up_blocks.{b}.resnets.{n}.", f"output_blocks.{i}.0.", _UNET_RESNET))
                if self.up_attention[b]:
                    entries.append((f"up_blocks.{b}.attentions.{n}.", f"output_blocks.{i}.1.", None))
            if b < last:
                i = b * stride + self.layers_per_block
                slot = 2 if self.up_attention[b] else 1
                entries.append((f"up_blocks.{b}.upsamplers.0.conv.", f"output_blocks.{i}.{slot}.conv.", None))
        return KeyMap(entries)


def _count(keys: Iterable[str], prefix: str) -> int:
    """1 + the largest index N among keys ``prefix + "N.…"`` (0 if none)."""
    indices = [int(k[len(prefix) :].split(".", 1)[0]) for k in keys if k.startswith(prefix)]
    return max(indices) + 1 if indices else 0


def vae_key_map(levels: int, layers_per_block: int) -> KeyMap:
    """The Diffusers <-> LDM key table of an AutoencoderKL (``block_out_channels`` levels)."""
    entries: list[tuple[str, str, Mapping[str, str] | None]] = [
        ("quant_conv.", "quant_conv.", None),
        ("post_quant_conv.", "post_quant_conv.", None),
    ]
    for part in ("encoder", "decoder"):
        entries += [
            (f"{part}.conv_in.", f"{part}.conv_in.", None),
            (f"{part}.conv_norm_out.", f"{part}.norm_out.", None),
            (f"{part}.conv_out.", f"{part}.conv_out.", None),
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", _VAE_RESNET),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", _VAE_RESNET),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTENTION),
        ]
    for i in range(levels):
        up = levels - 1 - i  # the decoder counts its levels the other way round
        for j in range(layers_per_block):
            entries.append(
                (f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", _VAE_RESNET)
            )
        for j in range(layers_per_block + 1):  # a decoder level has one resnet more
            entries.append(
                (f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{up}.block.{j}.", _VAE_RESNET)
            )
        entries += [
            (f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.", None),
            (f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{up}.upsample.conv.", None),
        ]
    return KeyMap(entries)


def _is_vae_attention_weight(diffusers_key: str) -> bool:
    return ".mid_block.attentions." in diffusers_key and diffusers_key.endswith(
        ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")
    )


def _select(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _linear_or_conv(weight: torch.Tensor, linear: bool) -> torch.Tensor:
    """A 1x1 conv weight as a Linear weight (``linear``) or the other way round."""
    if linear and weight.ndim == 4:
        return weight.reshape(weight.shape[0], weight.shape[1])
    if not linear and weight.ndim == 2:
        return weight.reshape(*weight.shape, 1, 1)
    return weight


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], layout: UNetLayout | None = None) -> StateDict:
    """Diffusers U-Net state dict -> LDM keys (``model.diffusion_model.*``), shapes kept.

    ``layout`` defaults to the structure read off the keys; pass ``UNetLayout.from_config``
    to check the state dict against a config instead.
    """
    layout = layout if layout is not None else UNetLayout.from_diffusers_keys(state_dict)
    key_map = layout.key_map()
    out: StateDict = {}
    for key, tensor in state_dict.items():
        name = key_map.to_ldm(key)
        if name is None:
            raise FormatError(f"U-Net key {key}: no LDM equivalent for a {layout.levels}-level SD U-Net")
        out[UNET_PREFIX + name] = tensor
    return out


def unet_from_ldm(checkpoint: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> StateDict:
    """LDM U-Net keys of a checkpoint -> Diffusers keys for a U-Net built from ``config``.

    ``proj_in``/``proj_out`` become Linear (2-D) or 1x1 conv (4-D) weights as the config's
    ``use_linear_projection`` asks, whichever the file holds.
    """
    key_map = UNetLayout.from_config(config).key_map()
    linear = bool(config.get("use_linear_projection", False))
    out: StateDict = {}
    for key, tensor in _select(checkpoint, UNET_PREFIX).items():
        name = key_map.from_ldm(key)
        if name is None:
            raise FormatError(f"{UNET_PREFIX}{key}: not a key of the U-Net layout of this model config")
        if name.endswith(("proj_in.weight", "proj_out.weight")):
            tensor = _linear_or_conv(tensor, linear)
        out[name] = tensor
    return out


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Diffusers AutoencoderKL state dict -> LDM keys (``first_stage_model.*``).

    The structure is read off the keys, so the VAE's config is not needed.
    """
    levels = _count(state_dict, "encoder.down_blocks.")
    key_map = vae_key_map(levels, _count(state_dict, "encoder.down_blocks.0.resnets."))
    out: StateDict = {}
    for key, tensor in state_dict.items():
        name = key_map.to_ldm(key)
        if name is None:
            raise FormatError(f"VAE key {key}: no LDM equivalent for a {levels}-level AutoencoderKL")
        if _is_vae_attention_weight(key):
            tensor = _linear_or_conv(tensor, linear=False)
        out[VAE_PREFIX + name] = tensor
    return out


def vae_from_ldm(checkpoint: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> StateDict:
    """LDM VAE keys of a checkpoint -> Diffusers keys for an AutoencoderKL built from ``config``."""
    levels = len(config["block_out_channels"])
    key_map = vae_key_map(levels, int(config["layers_per_block"]))
    out: StateDict = {}
    for key, tensor in _select(checkpoint, VAE_PREFIX).items():
        name = key_map.from_ldm(key)
        if name is None:
            raise FormatError(f"{VAE_PREFIX}{key}: not a key of a {levels}-level AutoencoderKL")
        out[name] = _linear_or_conv(tensor, linear=True) if _is_vae_attention_weight(name) else tensor
    return out


def text_encoder_to_ldm(state_dict: Mapping[str, torch.Tensor], *, v2: bool) -> StateDict:
    """HF CLIPTextModel state dict (transformers 5 names) -> LDM keys.

    v1: ``cond_stage_model.transformer.text_model.*`` (plus ``embeddings.position_ids``, which
    older loaders expect). v2: OpenCLIP names under ``cond_stage_model.model.`` with q/k/v fused
    into ``in_proj_weight``/``in_proj_bias``; layers the HF model dropped are not produced.
    """
    if not v2:
        out = {f"{TE_V1_PREFIX}text_model.{k}": v for k, v in state_dict.items()}
        positions = state_dict["embeddings.position_embedding.weight"].shape[0]
        out[f"{TE_V1_PREFIX}text_model.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
        return out
    out = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        if key in _OPENCLIP_TOP:
            out[TE_V2_PREFIX + _OPENCLIP_TOP[key]] = tensor
            continue
        layer, rest = _split_layer(key, "encoder.layers.")
        if layer is None:
            raise FormatError(f"text encoder key {key}: not a CLIPTextModel key")
        block = f"{TE_V2_PREFIX}transformer.resblocks.{layer}."
        if rest.startswith(("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")):
            kind = rest.split(".")[-1]  # weight | bias
            qkv.setdefault(f"{block}attn.in_proj_{kind}", {})[rest[len("self_attn.") :][0]] = tensor
            continue
        inner = next((old for old in _OPENCLIP_LAYER if rest.startswith(old)), None)
        if inner is None:
            raise FormatError(f"text encoder key {key}: no OpenCLIP equivalent")
        out[block + _OPENCLIP_LAYER[inner] + rest[len(inner) :]] = tensor
    for name, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise FormatError(f"text encoder: {name} needs q_proj, k_proj and v_proj; found {sorted(parts)}")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def text_encoder_from_ldm(checkpoint: Mapping[str, torch.Tensor], *, v2: bool, num_layers: int) -> StateDict:
    """LDM text-encoder keys of a checkpoint -> HF CLIPTextModel keys (transformers 5 names).

    v1 files may lack the ``text_model.`` level (old checkpoints). v2 (OpenCLIP) layers from
    ``num_layers`` on, ``text_projection`` and ``logit_scale`` are dropped: SD2 conditions on
    the penultimate layer, so its HF text encoder has one layer fewer than the file.
    """
    if not v2:
        out: StateDict = {}
        for key, tensor in _select(checkpoint, TE_V1_PREFIX).items():
            name = key[len("text_model.") :] if key.startswith("text_model.") else key
            if name != "embeddings.position_ids":  # a non-persistent buffer in transformers 5
                out[name] = tensor
        return out
    inverse_top = {v: k for k, v in _OPENCLIP_TOP.items()}
    inverse_layer = {v: k for k, v in _OPENCLIP_LAYER.items()}
    out = {}
    for key, tensor in _select(checkpoint, TE_V2_PREFIX).items():
        if key in inverse_top:
            out[inverse_top[key]] = tensor
            continue
        if key in _OPENCLIP_UNUSED:
            continue
        layer, rest = _split_layer(key, "transformer.resblocks.")
        if layer is None:
            raise FormatError(f"{TE_V2_PREFIX}{key}: not an OpenCLIP text-encoder key")
        if layer >= num_layers:
            continue
        block = f"encoder.layers.{layer}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[1]
            # clone: the three parts must not share storage (safetensors refuses shared tensors)
            for letter, part in zip("qkv", tensor.chunk(3, dim=0)):
                out[f"{block}self_attn.{letter}_proj.{kind}"] = part.clone()
            continue
        inner = next((old for old in inverse_layer if rest.startswith(old)), None)
        if inner is None:
            raise FormatError(f"{TE_V2_PREFIX}{key}: not an OpenCLIP text-encoder key")
        out[block + inverse_layer[inner] + rest[len(inner) :]] = tensor
    return out


def _split_layer(key: str, prefix: str) -> tuple[int | None, str]:
    """``prefix + "N.rest"`` -> (N, "rest"); (None, key) if the key does not look like that."""
    if not key.startswith(prefix):
        return None, key
    index, _, rest = key[len(prefix) :].partition(".")
    return (int(index), rest) if index.isdigit() else (None, key)
