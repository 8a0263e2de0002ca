"""Build what training needs, in kohya's order: dataset first (so data errors come before any
model is loaded), then the base model, then the network on it."""

from __future__ import annotations

import logging
from typing import Any

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from adapters_core.errors import ConfigError, NetworkOptionError
from adapters_core.family import ModelFamily
from adapters_core.models import SDModel, load_sd_model
from adapters_core.module import load_module_tensors
from adapters_core.network import Network
from adapters_core.options import all_options, parse_network_args
from adapters_core.plugins import get_registry
from adapters_core.train.args import TrainArgs
from adapters_core.train.dataset import ImageDataset, LatentsProvider, config_from_folders, load_dataset_config
from adapters_core.train.latent_cache import CachedLatentsDataset
from adapters_core.types import NetworkType

log = logging.getLogger(__name__)

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def network_dtype(args: TrainArgs) -> torch.dtype:
    """The dtype of the trained adapter's weights, hence of its gradients and optimizer state:
    float32, or the --mixed_precision dtype under --full_bf16/--full_fp16 (as kohya)."""
    return WEIGHT_DTYPES[args.mixed_precision] if args.full_precision else torch.float32


def resolve_network_type(network: str | None, network_module: str | None) -> NetworkType:
    """``--network`` (our name) and/or ``--network_module`` (kohya's); lora by default.

    Several types may record the same kohya module (lora and c3lier both write
    ``networks.lora``); a kohya module name then means the type named like its last part.
    """
    registry = get_registry()
    if network is not None:
        chosen = registry.get(network)
        if network_module is not None and network_module not in (chosen.kohya_module, chosen.name):
            raise ConfigError(f"--network {network} and --network_module {network_module}: they name different types")
        return chosen
    return registry.get(network_module or "lora")  # the registry knows what a kohya module name means


def build_dataset(args: TrainArgs, latents: LatentsProvider | None) -> ImageDataset:
    """The dataset from ``--dataset_config`` or the folders; every data error is raised here."""
    cli = args.dataset_cli_values()
    if args.dataset_config is not None:
        ignored = [f"--{name}" for name in ("train_data_dir", "reg_data_dir", "in_json") if getattr(args, name)]
        if ignored:
            log.warning("--dataset_config is given, so %s are ignored", ", ".join(ignored))
        config = load_dataset_config(args.dataset_config, cli)
    else:
        config = config_from_folders(args.train_data_dir, args.reg_data_dir, cli)
    if latents is not None:
        return CachedLatentsDataset(config, seed=args.seed or 0, latents_provider=latents)
    return ImageDataset(config, seed=args.seed or 0)


def set_attention(model: SDModel, args: TrainArgs) -> None:
    """``--xformers`` when installed, else (and for ``--sdpa``) PyTorch scaled-dot-product attention."""
    if args.xformers:
        try:
            import xformers  # noqa: F401

            model.unet.enable_xformers_memory_efficient_attention()
            model.vae.enable_xformers_memory_efficient_attention()
            return
        except ImportError:
            log.info("xformers is not installed; using PyTorch scaled-dot-product attention")
    if args.xformers or args.sdpa or args.mem_eff_attn:
        model.unet.set_attn_processor(AttnProcessor2_0())


def vae_dtype(weight_dtype: torch.dtype, no_half_vae: bool, family: ModelFamily) -> torch.dtype:
    """The training VAE's dtype: the mixed-precision dtype, float32 with --no_half_vae or when
    the family's VAE overflows float16 (SDXL) under fp16."""
    if no_half_vae or (family.vae_needs_float32 and weight_dtype == torch.float16):
        return torch.float32
    return weight_dtype


def load_base_model(args: TrainArgs, device: torch.device) -> SDModel:
    """Load in float32 (so --base_weights merge exactly), merge base weights, then cast:
    U-Net to the mixed-precision dtype, the text encoder too except on CPU (as kohya), the
    VAE as :func:`vae_dtype` says."""
    weight_dtype = WEIGHT_DTYPES[args.mixed_precision]
    model = load_sd_model(
        args.pretrained_model_name_or_path,  # type: ignore[arg-type]
        family=args.model_family(),
        v_parameterization=True if args.v_parameterization else None,
        dtype=torch.float32,
        tokenizer_path=args.tokenizer,
    )
    if model.family.kohya_v2 and not args.v2:
        log.info("%s is an %s model; training as with --v2", args.pretrained_model_name_or_path, model.family.description)
    if model.v_parameterization and not args.v_parameterization:
        log.info("the model's scheduler predicts v; training with v-prediction targets")
    for index, path in enumerate(args.base_weights):
        multiplier = args.base_weights_multiplier[index] if index < len(args.base_weights_multiplier) else 1.0
        Network.from_file(path, model=model, multiplier=multiplier).merge_to()
        log.info("merged base weights %s (multiplier %s)", path, multiplier)
    for module in model.modules():
        module.requires_grad_(False)
    model.unet.to(device, weight_dtype)
    for _, text_encoder in model.text_encoders():
        text_encoder.to(device, weight_dtype if device.type != "cpu" else torch.float32)
    # diffusers wraps ModelMixin.to in a decorator whose type loses the method's self
    vae_to = vae_dtype(weight_dtype, args.no_half_vae, model.family)
    if vae_to != weight_dtype and not args.no_half_vae:
        log.info("the %s VAE overflows float16: it is kept in float32 (as --no_half_vae)", model.family.description)
    model.vae.to(device, vae_to)  # type: ignore[arg-type]
    set_attention(model, args)
    if args.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        if args.train_text_encoder:
            for _, text_encoder in model.text_encoders():
                encoder: Any = text_encoder  # a transformers PreTrainedModel
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def network_options(args: TrainArgs, network_type: NetworkType) -> tuple[dict[str, Any], dict[str, str]]:
    """(options for Network.create, the raw --network_args for the metadata)."""
    raw = parse_network_args(args.network_args)
    options: dict[str, Any] = dict(raw)
    if args.network_dim is not None:
        options["network_dim"] = args.network_dim
    options.setdefault("network_alpha", args.network_alpha)
    if args.network_dropout is not None and "dropout" not in options:
        if "dropout" not in all_options(network_type):
            raise NetworkOptionError(f"--network_dropout: network type '{network_type.name}' has no dropout option")
        options["dropout"] = args.network_dropout
    return options, raw


def create_network(args: TrainArgs, model: SDModel, network_type: NetworkType, options: dict[str, Any]) -> Network:
    """The trained network on the U-Net and/or text encoders (per --network_train_*_only),
    from scratch or shaped by --network_weights (--dim_from_weights); applied, in :func:`network_dtype`."""
    trained = {
        part.name: model.components[part.name]
        for part in model.family.components
        if (args.train_text_encoder if part.role == "text_encoder" else args.train_unet)
    }
    partial = len(trained) < len(model.components)
    if args.dim_from_weights:
        if set(options) - {"network_dim", "network_alpha"}:
            # Network.from_weights takes no options yet: dropouts and type options keep their defaults.
            log.warning(
                "--dim_from_weights: ranks and alphas come from %s; --network_args and --network_dropout are not used",
                args.network_weights,
            )
        path = str(args.network_weights)
        network = Network.from_file(  # the modules of a side not trained have no layer here
            path, family=model.family, components=trained, network=network_type.name, allow_unmatched=partial,
        )
    else:
        network = Network.create(network_type.name, family=model.family, components=trained, options=options)
        if args.network_weights:
            load_network_weights(network, args.network_weights, model)
    if not any(True for _ in network.adapter_modules()):
        raise NetworkOptionError("the network has no modules (check --network_train_*_only and block_dims/lr weights)")
    network.to(network_dtype(args))
    network.apply()
    return network


def load_network_weights(network: Network, path: str, model: SDModel) -> None:
    """--network_weights: copy a file's tensors into the new network. Shapes must match
    (ShapeMismatchError names the module); modules on only one side are reported, not fatal."""
    loaded = Network.from_file(path, model=model, network=network.network_type.name)
    own, theirs = dict(network.adapter_modules()), dict(loaded.adapter_modules())
    for name in own.keys() & theirs.keys():
        load_module_tensors(own[name], f"{path}: {name}", loaded.module_tensors(name))
    extra, missing = sorted(theirs.keys() - own.keys()), sorted(own.keys() - theirs.keys())
    if extra:
        log.warning(
            "--network_weights %s: %d modules are not part of this network and were not loaded: %s",
            path,
            len(extra),
            ", ".join(extra[:3]) + (" ..." if len(extra) > 3 else ""),
        )
    if missing:
        log.warning("--network_weights %s: %d network modules are not in the file and start fresh", path, len(missing))
    log.info("--network_weights %s: loaded %d modules", path, len(own) - len(missing))
