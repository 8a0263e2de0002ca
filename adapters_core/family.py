"""The model-family contract: what differs between base models, owned by a plugin.

A *model family* (SD 1.x, SD 2.x, the tiny demo model, a third-party base model) is
registered by a plugin of the ``adapt.models`` entry-point group through the hook
``register_model_families`` (see :mod:`adapters_core.hookspecs`), exactly as adapter types
are registered. The core never asks "is this SD 2?": it asks the family of the model at hand
for its components, its block layout, its prompt encoding, its pipeline and its names.

A family is an instance of a :class:`ModelFamily` subclass. The abstract methods below are
what every family must answer; the project's own Stable Diffusion families (package
``adapt_sd``) show a complete implementation that other families may subclass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from adapters_core.blocks import SD_BLOCKS, BlockLayout

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapters_core.layer_table import LayerTable
    from adapters_core.models.components import SDModel
    from adapters_core.targets import Target

TextOutputs = dict[str, "torch.Tensor"]
"""What encoding a batch of prompts gives: named tensors, batch first (the text cache stores
whatever a family returns)."""

ComponentRole = Literal["unet", "text_encoder"]


@dataclass(frozen=True)
class Component:
    """One adaptable part of a base model.

    ``name`` is its key in :attr:`SDModel.components` (``unet``, ``text_encoder``,
    ``text_encoder_2``); ``kohya_prefix`` starts the kohya module names of its layers
    (``lora_unet``, ``lora_te``, ``lora_te1``); ``role`` picks the target rules (which
    containers' Linear/Conv2d layers an adapter takes). ``adapt convert`` maps diffusers/PEFT
    component keys (``text_encoder_2.``) to these prefixes and recognises kohya files by them.
    """

    name: str
    kohya_prefix: str
    role: ComponentRole


class ModelFamily:
    """A base-model family. Subclasses set the class attributes and implement the methods.

    Prediction type (epsilon or v) is not a family of its own: a loaded model records it
    (kohya's ``--v_parameterization``, a Diffusers scheduler's ``prediction_type``), and the
    family names it in metadata (:meth:`base_model_version`, :meth:`architecture`).
    """

    #: Registered name (``--model_family``, ``adapt networks``).
    name: str = ""
    description: str = ""
    #: The adaptable components, text encoders first (kohya's module order).
    components: tuple[Component, ...] = ()
    #: The U-Net's block layout for block-wise ranks, learning rates and weights.
    blocks: BlockLayout = SD_BLOCKS
    #: kohya's ``ss_v2`` (and what ``--v2`` asks for): the family uses SD 2.x's text encoder.
    kohya_v2: bool = False
    #: kohya's ``ss_base_model_version`` values this family writes and reads.
    base_model_versions: tuple[str, ...] = ()
    #: Names of the family's bundled models that ``--model`` accepts instead of a path (``check``,
    #: ``convert``): name -> whether that bundled model predicts v (``sd_v2_v``).
    model_names: Mapping[str, bool] = {}
    #: The VAE's activations overflow float16 (SDXL 1.0's give NaN): training keeps it in
    #: float32 under ``--mixed_precision fp16`` as if ``--no_half_vae`` were given
    #: (bfloat16 has float32's range and is used as asked).
    vae_needs_float32: bool = False
    #: :meth:`write_demo_model` writes a small model of the family (``adapt quickstart --model_family``).
    has_demo_model: bool = False

    @property
    def text_encoder_names(self) -> list[str]:
        """The components that are text encoders, in the family's order."""
        return [part.name for part in self.components if part.role == "text_encoder"]

    # -- names ---------------------------------------------------------------------------
    def base_model_version(self, v_prediction: bool) -> str:
        """kohya's ``ss_base_model_version`` of an adapter trained on this family."""
        raise NotImplementedError

    def architecture(self, v_prediction: bool) -> str:
        """``modelspec.architecture`` of the base model (``stable-diffusion-v1``)."""
        raise NotImplementedError

    def default_resolution(self, v_prediction: bool) -> int:
        """The side of the square images the family was trained on (512, 768, 1024)."""
        raise NotImplementedError

    def claims_metadata(self, metadata: Mapping[str, str]) -> bool:
        """Whether an adapter file's metadata says it was made for this family."""
        return metadata.get("ss_base_model_version", "") in self.base_model_versions

    def foreign_module_hint(self, module_name: str) -> str | None:
        """Why a kohya module name of a file cannot belong to this family, when the family can
        tell (``lora_te2_...`` on a one-encoder model); ``None`` otherwise."""
        return None

    def module_path_for_name(self, component: Component, path: str) -> str:
        """The module path a layer's kohya name is built from (``kohya_prefix`` + path, dots as
        underscores), given its path in the component as ``named_modules()`` gives it.

        By default the diffusers path, text-encoder paths in the file format's ``text_model.``
        form; a family whose files name U-Net layers after another layout (SDXL's LDM names)
        maps the path here."""
        from adapters_core.targets import text_encoder_module_path  # torch: not at import time

        if component.role == "text_encoder":
            return text_encoder_module_path(path)
        return path

    def module_aliases(self, components: Mapping[str, nn.Module | None], targets: Iterable[Target]) -> dict[str, str]:
        """Other spellings of the ``targets``' module names that files use for this family
        (LDM-style U-Net names) -> the standard kohya name; loading and ``check`` accept both."""
        return {}

    # -- detection and loading ------------------------------------------------------------
    def detect_checkpoint(self, shapes: Mapping[str, torch.Tensor], path: Path) -> bool:
        """Whether a single-file checkpoint is this family's; ``shapes`` holds its tensors as
        ``meta`` tensors (shapes only).

        May raise :class:`~adapters_core.errors.ModelLoadError` for a file that looks like the
        family's but is broken; the host then asks the other families before reporting it.
        """
        raise NotImplementedError

    def detect_diffusers(self, folder: Path, model_index: Mapping[str, Any]) -> bool:
        """Whether a Diffusers folder (its parsed ``model_index.json``) is this family's."""
        raise NotImplementedError

    def load(
        self,
        path: Path,
        *,
        v_prediction: bool | None,
        dtype: torch.dtype,
        tokenizer_path: Path | None,
        need_tokenizer: bool,
    ) -> SDModel:
        """Load a single file or a Diffusers folder of this family, offline.

        ``v_prediction`` ``None`` means: as the folder's scheduler says (a single file cannot
        tell: epsilon).
        """
        raise NotImplementedError

    def build_components(
        self, *, device: str = "meta", folder: Path | None = None, v_prediction: bool = False
    ) -> dict[str, nn.Module]:
        """The adaptable components without weights (on ``meta``): from the bundled configs,
        or from a Diffusers ``folder``'s configs. For naming, checking and converting."""
        raise NotImplementedError

    def config(self, component: str) -> dict[str, Any]:
        """One bundled component's config as a Diffusers folder stores it (``"unet"``,
        ``"vae"``, ...; a fresh copy; the default variant's). Families with bundled configs
        implement it."""
        raise NotImplementedError

    def layer_table(self) -> LayerTable:
        """Every layer an adapter file may adapt in the bundled model, with the other spellings
        of their names: what the tools that read files without a model use.

        By default built from :meth:`build_components` on ``meta`` (which imports the model
        libraries); a family may ship it as JSON (:meth:`LayerTable.read`) so that ``inspect``,
        ``check`` and the adapter-only tools start without them."""
        from adapters_core.layer_table import LayerTable

        return LayerTable.of(self, self.build_components(device="meta"))

    def checkpoint_state_dict(self, model: SDModel) -> dict[str, torch.Tensor]:
        """The model's tensors under the keys of the family's original single-file layout
        (what ``merge --sd_model ... --save_to x.safetensors`` writes)."""
        raise NotImplementedError

    def checkpoint_module_keys(self, shapes: Mapping[str, torch.Tensor], v_prediction: bool) -> dict[str, list[str]]:
        """For a single-file checkpoint (``shapes``: its tensors on ``meta``): each weight key
        of an adaptable layer -> the kohya module names it holds, in order along dim 0
        (several for a fused q/k/v projection). The streaming merge writes deltas into
        exactly these keys."""
        raise NotImplementedError

    def write_demo_model(self, folder: Path, *, seed: int) -> None:
        """Write the family's demo model (a few MB, random weights from ``seed``, no download) as a
        Diffusers folder, replacing one there; families with ``has_demo_model`` implement it."""
        raise NotImplementedError

    # -- prompts, U-Net call, pipeline -------------------------------------------------------
    def encode_text(
        self,
        components: Mapping[str, nn.Module],
        tokenizers: Mapping[str, Any],
        prompts: list[str],
        *,
        max_token_length: int | None,
        clip_skip: int | None,
    ) -> TextOutputs:
        """Encode prompts for training and for generation (gradients as the caller's context).

        ``components``/``tokenizers`` are a loaded model's (:class:`SDModel`) or a pipeline's."""
        raise NotImplementedError

    def unet_conditioning(self, outputs: TextOutputs, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments of the U-Net call besides latents and timesteps, from the
        encoded captions and the training batch (sizes, crops)."""
        raise NotImplementedError

    def pipeline_conditioning(self, positive: TextOutputs, negative: TextOutputs) -> dict[str, Any]:
        """The keyword arguments that hand encoded prompts to the family's pipeline."""
        raise NotImplementedError

    def build_pipeline(self, model: SDModel, scheduler: Any) -> Any:
        """A Diffusers pipeline around the model's modules (shared, not copied)."""
        raise NotImplementedError

    def owns_pipeline(self, pipe: Any) -> bool:
        """Whether a Diffusers pipeline object (Python API) is of this family."""
        raise NotImplementedError

    def check_clip_skip(self, components: Mapping[str, nn.Module], clip_skip: int | None) -> None:
        """Refuse a ``--clip_skip`` the text encoders do not have layers for (before any work)."""
        raise NotImplementedError

    def pipeline_tokenizers(self, pipe: Any) -> dict[str, Any]:
        """The tokenizers of one of the family's pipelines, by text-encoder component name."""
        names = self.text_encoder_names
        tokenizer_attr = {name: name.replace("text_encoder", "tokenizer") for name in names}
        return {name: getattr(pipe, attr, None) for name, attr in tokenizer_attr.items()}

    def pipeline_components(self, pipe: Any) -> dict[str, nn.Module]:
        """The adaptable components of one of the family's pipelines, by component name."""
        return {c.name: getattr(pipe, c.name) for c in self.components if getattr(pipe, c.name, None) is not None}

    def __repr__(self) -> str:
        return f"<model family {self.name}>"
