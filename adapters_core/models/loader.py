"""Load a base model of any installed family, offline, and the helpers families load with.

:func:`load_sd_model` finds the model's family (:func:`detect_family`: each installed family
is asked in registration order) and lets the family load it. The other functions are the
shared machinery families use: reading one Diffusers component, adopting converted tensors
into a module built without weights, finding a CLIP tokenizer on disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from safetensors import SafetensorError

from adapters_core.errors import AdaptError, ModelLoadError
from adapters_core.family import ModelFamily
from adapters_core.models.components import SDModel
from adapters_core.models.single_file import PathLike, read_checkpoint
from adapters_core.plugins import get_registry
from adapters_core.quiet import apply_library_verbosity
from adapters_core.textfiles import read_json

if TYPE_CHECKING:  # transformers, accelerate and huggingface_hub load in the functions that use them
    from transformers import CLIPTokenizer

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def load_sd_model(
    path: PathLike,
    *,
    family: str | ModelFamily | None = None,
    v_parameterization: bool | None = None,
    dtype: torch.dtype = torch.float32,
    tokenizer_path: PathLike | None = None,
    device: str | torch.device = "cpu",
    need_tokenizer: bool = True,
) -> SDModel:
    """Load a model; nothing is downloaded.

    The family is detected (``family``, if given, must match). ``v_parameterization``
    defaults to the Diffusers folder's scheduler ``prediction_type``; a single file cannot
    tell, so there it defaults to False (kohya: the user says). The tokenizer comes from the
    Diffusers folder, else ``tokenizer_path`` (a tokenizer folder or a Diffusers model
    folder), else the local HF cache. ``need_tokenizer=False`` (merge/extract tools) gives
    no tokenizer instead of an error when none is found.
    """
    path = Path(path)
    found = detect_family(path)
    check_family(path, family, found)
    apply_library_verbosity()  # the libraries' own bars and logs, as --verbose says
    model = found.load(
        path,
        v_prediction=v_parameterization,
        dtype=dtype,
        tokenizer_path=Path(tokenizer_path) if tokenizer_path is not None else None,
        need_tokenizer=need_tokenizer,
    )
    for module in model.modules():
        module.to(device)
    return model


def check_family(path: Path, wanted: str | ModelFamily | None, found: ModelFamily) -> None:
    """A model family the user named (``--v2`` means SD 2.x's) must be the detected one."""
    if wanted is None:
        return
    name = wanted if isinstance(wanted, str) else wanted.name
    get_registry().family(name)  # an unknown name is its own error
    if name != found.name:
        raise ModelLoadError(
            f"{path}: model family {name} was given but this is a {found.name} model ({found.description})"
        )


def detect_family(path: Path) -> ModelFamily:
    """The installed family of a Diffusers folder or a single-file checkpoint.

    Families are asked in registration order; one that recognises a broken model of its own
    raises, and that error is reported when no other family claims the model.
    """
    if not path.exists():
        raise ModelLoadError(
            f"{path}: no such file or folder; expected a Diffusers model folder or a .safetensors/.ckpt checkpoint"
        )
    families = list(get_registry().families.values())
    if path.is_dir():
        index_file = path / "model_index.json"
        if not index_file.is_file():
            raise ModelLoadError(f"{path}: folder has no model_index.json; expected a Diffusers model folder")
        model_index = read_json(index_file, str(index_file), ModelLoadError)
        if not isinstance(model_index, dict):
            raise ModelLoadError(f"{index_file}: expected a JSON object (a Diffusers model index)")
        claimed = _first_claim(families, lambda f: f.detect_diffusers(path, model_index))
        return _claimed(families, claimed, path, f"Diffusers folder of a {model_index.get('_class_name', 'pipeline')}")
    return family_of_checkpoint(checkpoint_shapes(path), path)


def family_of_checkpoint(shapes: Mapping[str, torch.Tensor], path: Path) -> ModelFamily:
    """The installed family of a single-file checkpoint whose tensors (``meta`` is enough) are ``shapes``."""
    families = list(get_registry().families.values())
    claimed = _first_claim(families, lambda f: f.detect_checkpoint(shapes, path))
    return _claimed(families, claimed, path, "checkpoint")


def _claimed(families: list[ModelFamily], claimed: ModelFamily | AdaptError | None, path: Path, what: str) -> ModelFamily:
    if isinstance(claimed, ModelFamily):
        return claimed
    if claimed is not None:
        raise claimed
    names = ", ".join(family.name for family in families) or "none installed"
    raise ModelLoadError(f"{path}: no installed model family reads this {what}; installed families: {names}")


def _first_claim(families: list[ModelFamily], claims: Callable[[ModelFamily], bool]) -> ModelFamily | AdaptError | None:
    first_error: AdaptError | None = None
    for family in families:
        try:
            if claims(family):
                return family
        except AdaptError as error:
            first_error = first_error or error
    return first_error


def checkpoint_shapes(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a single file as ``meta`` tensors (shapes only; a safetensors header is
    all that is read, a pickle has to be loaded)."""
    from adapters_core.formats import is_safetensors, weights_header

    if is_safetensors(path, "checkpoint format"):
        return {
            key: torch.empty(info["shape"], device="meta")
            for key, info in weights_header(path).items()
            if key != "__metadata__" and isinstance(info, dict)
        }
    return {key: tensor.to("meta") for key, tensor in read_checkpoint(path)[0].items()}


def from_pretrained(load: Callable[..., ModuleT], path: Path, subfolder: str, **kwargs: Any) -> ModuleT:
    """One component of a Diffusers folder, offline; a missing or broken one is one line."""
    if not (path / subfolder).is_dir():
        raise ModelLoadError(f"{path}: no {subfolder}/ folder; expected a Stable Diffusion Diffusers folder")
    try:
        return load(path, subfolder=subfolder, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as error:
        message = " ".join(str(error).split())[:300]
        raise ModelLoadError(f"{path / subfolder}: cannot load ({message})") from error


def scheduler_config_of(path: Path, bundled: dict[str, Any], v_prediction: bool | None) -> tuple[dict[str, Any], bool]:
    """A Diffusers folder's scheduler config (the bundled one when it has none) with the
    prediction type settled: as given, else as the folder's scheduler says."""
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    config: dict[str, Any] = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else bundled
    if v_prediction is None:
        v_prediction = config.get("prediction_type") == "v_prediction"
    config["prediction_type"] = "v_prediction" if v_prediction else "epsilon"
    return config, v_prediction


def forget_prefix(checkpoint: dict[str, torch.Tensor], prefix: str) -> None:
    """Drop a component's tensors from the checkpoint once they have been converted."""
    for key in [k for k in checkpoint if k.startswith(prefix)]:
        del checkpoint[key]


def assign_weights(
    path: Path, what: str, build: Callable[[], ModuleT], state: dict[str, torch.Tensor], dtype: torch.dtype
) -> ModuleT:
    """Build a module without allocating its weights, then adopt ``state``'s tensors, cast to
    ``dtype`` (``state`` is emptied; the key check guarantees every parameter is replaced)."""
    from accelerate import init_empty_weights

    with init_empty_weights():  # parameters on "meta"; buffers (CLIP position_ids) stay real
        module = build()
    # Copies, even without a cast: tensors read from a safetensors file are views at unaligned
    # offsets, on which CPU kernels round differently from a Diffusers-loaded model.
    owned: dict[str, torch.Tensor] = {}
    for key in list(state):
        tensor = state.pop(key)
        owned[key] = tensor.to(dtype if tensor.is_floating_point() else tensor.dtype, copy=True)
    try:
        result = module.load_state_dict(owned, strict=False, assign=True)
    except RuntimeError as error:  # shape mismatch
        message = " ".join(str(error).split())[:300]
        raise ModelLoadError(f"{path}: {what} weights do not fit the SD config ({message})") from error
    problems = [f"missing {k}" for k in result.missing_keys]
    problems += [f"unexpected {k}" for k in result.unexpected_keys]
    if problems:
        raise ModelLoadError(f"{path}: {what} keys do not fit the model config: {', '.join(problems[:5])}")
    return module.eval()  # as from_pretrained leaves it


def has_tokenizer_files(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )


def find_clip_tokenizer(
    model_path: Path,
    cached_repo: tuple[str, str],
    tokenizer_path: PathLike | None,
    text_encoder: Any,
    need_tokenizer: bool,
    model_name: str = "",
) -> CLIPTokenizer | None:
    """The tokenizer from ``tokenizer_path`` or the HF cache (``cached_repo``: repository and
    subfolder; files checked first: transformers 5 silently builds an empty tokenizer from a
    folder without them). ``model_name`` names the model in the hint (``SD 1.x``)."""
    from huggingface_hub import try_to_load_from_cache
    from transformers import CLIPTokenizer

    if tokenizer_path is not None:
        folder = Path(tokenizer_path)
        if has_tokenizer_files(folder / "tokenizer"):
            folder = folder / "tokenizer"
        if not has_tokenizer_files(folder):
            raise ModelLoadError(
                f"{tokenizer_path}: no CLIP tokenizer there; expected vocab.json and merges.txt "
                "(or a Diffusers model folder with tokenizer/)"
            )
    else:
        repo, subfolder = cached_repo
        cached = try_to_load_from_cache(repo, subfolder + "vocab.json")
        folder = Path(cached).parent if isinstance(cached, str) else Path()
        if not isinstance(cached, str) or not has_tokenizer_files(folder):
            if not need_tokenizer:
                return None
            raise ModelLoadError(
                f"{model_path}: no tokenizer found locally ({repo} is not in the HF cache); pass "
                f"tokenizer_path (--tokenizer) = a Diffusers {model_name} model folder "
                "or a folder with the CLIP tokenizer files vocab.json and merges.txt"
            )
    tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    max_length = text_encoder.config.max_position_embeddings
    if tokenizer.model_max_length > max_length:  # unset in some tokenizer configs: pads to 1e30
        tokenizer.model_max_length = max_length
    if len(tokenizer) > text_encoder.config.vocab_size:
        raise ModelLoadError(
            f"{folder}: tokenizer has {len(tokenizer)} tokens but the text encoder only "
            f"{text_encoder.config.vocab_size}; pass the tokenizer that belongs to this model"
        )
    return tokenizer
