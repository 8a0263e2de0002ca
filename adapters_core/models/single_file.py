"""Read and write whole-model checkpoints: single files in the LDM layout, Diffusers folders."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from adapters_core.atomic import atomic_path
from adapters_core.choices import CHECKPOINT_OUTPUT_SUFFIXES
from adapters_core.errors import FormatError, ModelLoadError
from adapters_core.formats import first_line, is_safetensors, pickled_tensors, read_weights, tensor_bytes
from adapters_core.models.components import SDModel
from adapters_core.models.ldm_layout import (
    StateDict,
    text_encoder_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)

PathLike = str | os.PathLike[str]
ComponentStateDicts = Mapping[str, Mapping[str, torch.Tensor]]

# (shape of a key, or None if absent; loader of a key's tensor; all keys)
_Template = tuple[Callable[[str], "torch.Size | None"], Callable[[str], torch.Tensor], list[str]]


def read_checkpoint(path: PathLike) -> tuple[StateDict, dict[str, str]]:
    """All tensors of a ``.safetensors`` or pickled (``.ckpt``/``.pt``/``.pth``/``.bin``) file.

    Pickles load with ``weights_only=True``; a ``state_dict`` sub-dict is unwrapped and
    non-tensor entries (``global_step`` and the like) are left out. Metadata is the
    safetensors header's ``__metadata__`` (empty for pickles).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    return read_weights(path, "checkpoint format")


def model_to_ldm(model: SDModel | ComponentStateDicts, *, v2: bool | None = None) -> StateDict:
    """The single-file state dict of a model (in its family's layout), or the LDM-layout one of
    a dict with ``unet``/``text_encoder``/``vae`` Diffusers state dicts (any subset). For a
    dict, ``v2`` (OpenCLIP layout) defaults to whether the text encoder's hidden size is 1024."""
    if isinstance(model, SDModel):
        return model.family.checkpoint_state_dict(model)
    if not model or set(model) - {"unet", "text_encoder", "vae"}:
        raise FormatError(f"component state dicts {sorted(model)}: expected keys among unet, text_encoder, vae")
    out: StateDict = {}
    if "unet" in model:
        out.update(unet_to_ldm(model["unet"]))
    if "text_encoder" in model:
        te = model["text_encoder"]
        if v2 is None:
            v2 = te["embeddings.token_embedding.weight"].shape[1] == 1024
        out.update(text_encoder_to_ldm(te, v2=v2))
    if "vae" in model:
        out.update(vae_to_ldm(model["vae"]))
    return out


def save_single_file(
    model: SDModel | ComponentStateDicts,
    path: PathLike,
    *,
    dtype: torch.dtype | None = None,
    template: PathLike | None = None,
    overwrite: bool = False,
    v2: bool | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a model as one LDM-layout ``.safetensors`` or ``.ckpt`` (``{"state_dict": ...}``).

    ``template`` is the single file the model came from: tensors the conversion does not
    produce (``model_ema.*``, SD2's last OpenCLIP layer, ``text_projection``, ``logit_scale``)
    are copied from it, and 1x1-conv/Linear ``proj_in``/``proj_out`` take its shape, so the
    result has the source's layout and key set. A safetensors template is read key by key.
    ``dtype`` casts floating tensors (carried ones too). ``metadata`` goes to the safetensors
    header. Returns the written path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_OUTPUT_SUFFIXES:
        expected = ", ".join(CHECKPOINT_OUTPUT_SUFFIXES)
        raise FormatError(f"{path}: unknown checkpoint format {suffix!r}; expected one of {expected}")
    tensors = model_to_ldm(model, v2=v2)
    if template is not None:
        with _open_template(Path(template)) as (shape_of, load, template_keys):
            for key, tensor in tensors.items():
                tensors[key] = _fit_to_template(key, tensor, shape_of(key), Path(template))
            for key in template_keys:
                if key not in tensors:
                    tensors[key] = load(key)
    tensors = {k: v.to("cpu", dtype=dtype) if v.is_floating_point() else v.cpu() for k, v in tensors.items()}
    with atomic_path(path, overwrite, expected_bytes=tensor_bytes(tensors)) as tmp:
        if is_safetensors(path, "checkpoint format"):
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=dict(metadata or {}))
        else:
            torch.save({"state_dict": tensors}, tmp)
    return path


@contextmanager
def _open_template(template: Path) -> Iterator[_Template]:
    if not template.is_file():
        raise ModelLoadError(f"{template}: no such file (template checkpoint)")
    if is_safetensors(template, "checkpoint format"):
        try:
            handle = safe_open(template, framework="pt", device="cpu")
        except (SafetensorError, OSError) as error:
            message = f"{template}: not a readable safetensors file ({first_line(error)})"
            raise FormatError(message) from error
        with handle:
            keys = list(handle.keys())
            present = set(keys)

            def shape_of(key: str) -> torch.Size | None:
                return torch.Size(handle.get_slice(key).get_shape()) if key in present else None

            yield shape_of, handle.get_tensor, keys
        return
    state = pickled_tensors(template, mmap=True)
    yield (lambda key: state[key].shape if key in state else None), state.__getitem__, list(state)


def _fit_to_template(
    key: str, tensor: torch.Tensor, shape: torch.Size | None, template: Path
) -> torch.Tensor:
    """Reshape a Linear <-> 1x1 conv weight to the template's shape; refuse other mismatches."""
    if shape is None or tensor.shape == shape:
        return tensor
    one_by_one = {tensor.ndim, len(shape)} == {2, 4} and tensor.numel() == shape.numel()
    if one_by_one and tensor.shape[:2] == shape[:2]:
        return tensor.reshape(shape)
    raise FormatError(
        f"{template}: {key} has shape {tuple(shape)} but the model's is {tuple(tensor.shape)}; "
        "pass the checkpoint the model was loaded from as template"
    )


def save_diffusers(model: SDModel, folder: PathLike, *, overwrite: bool = False) -> Path:
    """Write a Diffusers folder of the model family's pipeline (no safety checker), atomically.

    The scheduler saved is the class named in ``model.noise_scheduler_config`` (DDIM if none).
    """
    folder = Path(folder)
    from adapters_core.models.pipeline import scheduler_for_saving  # diffusers: only when a folder is written

    pipe = model.family.build_pipeline(model, scheduler_for_saving(model))
    weights = sum(tensor_bytes(m.state_dict()) for m in model.modules())
    with atomic_path(folder, overwrite, expected_bytes=weights) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return folder
