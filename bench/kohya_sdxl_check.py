"""kohya's ``networks/lora.py`` loads adapt's SDXL adapter files, with the same outputs.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/kohya_sdxl_check.py [--sd-scripts PATH] [--workdir DIR]
        [--networks lierla c3lier] [--for-inference false true] [--text-encoders]

In adapt's venv: a LierLa (``--network lora``, rank 8, alpha 4) and a C3Lier (``--network c3lier``,
conv_dim 4, conv_alpha 1) network on SDXL-sized models built without weights from adapt's bundled
SDXL configs, with random non-zero ``lora_down`` and ``lora_up`` weights, saved with
``Network.save`` and kohya's network metadata as ``adapt train`` saves them (fp16). adapt loads
each file back (``Network.from_file``) and computes every module's delta on a seeded random input.

In kohya's venv (bench/kohya_env.py, a subprocess): kohya's own SDXL U-Net
(``library/sdxl_original_unet.SdxlUNet2DConditionModel``) and both text encoders
(``CLIPTextModel`` and ``CLIPTextModelWithProjection`` from the same configs), all under
accelerate's ``init_empty_weights`` as kohya's SDXL loader builds them. First
``lora.create_network`` gives the modules kohya itself would train with the same ranks; then,
for each file and ``for_inference`` setting, ``lora.create_network_from_weights(1.0, file, None,
[te1, te2], unet)``, ``apply_to`` and ``load_state_dict`` (every key of the file must load and
none be missing), and every module's own ``forward`` on the same inputs with the layer's output
set to zero (kohya's down/up path, multiplier 1, its alpha scale; the conv path for 3x3 convs).

``--text-encoders`` also runs both text encoders in full, with random weights (written by
adapt's side, about 3.3 GB fp32, loaded by kohya's), bare and with the LierLa file loaded by
each side (peak about 4.2 GB in one process: run it under ``flock /tmp/adapt-heavy.lock``).

The check fails (exit 1) if kohya refuses a key, names a module differently, would train a
module set other than the file's, or an output differs by more than ``--tolerance`` (relative
to the largest entry of adapt's). Without a sd-scripts checkout it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

BENCH = Path(__file__).resolve().parent
SDXL_CONFIGS = BENCH.parent / "plugins" / "adapt_sdxl" / "configs" / "sdxl_base"
# file name -> (adapt network type, options); the same ranks are given to kohya's create_network
NETWORKS: dict[str, tuple[str, dict[str, Any]]] = {
    "lierla": ("lora", {"network_dim": 8, "network_alpha": 4}),
    "c3lier": ("c3lier", {"network_dim": 8, "network_alpha": 4, "conv_dim": 4, "conv_alpha": 1}),
}
PREFIXES = {"U-Net": "lora_unet_", "TE1": "lora_te1_", "TE2": "lora_te2_"}


def counts(names: list[str]) -> dict[str, int]:
    return {part: sum(name.startswith(prefix) for name in names) for part, prefix in PREFIXES.items()}


# -- kohya's venv ---------------------------------------------------------------------------------
def kohya_models(sd_scripts: Path) -> tuple[Any, list[Any], Any]:
    """kohya's lora module, SDXL text encoders and U-Net, without weights."""
    sys.path.insert(0, str(BENCH))
    from kohya_launch import import_torchvision_without_compiled_ops

    import_torchvision_without_compiled_ops()  # before diffusers and transformers import it
    sys.path[:0] = [str(sd_scripts), str(sd_scripts / "networks")]
    import lora  # kohya's networks/lora.py
    from accelerate import init_empty_weights
    from library.sdxl_original_unet import SdxlUNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        unet = SdxlUNet2DConditionModel()
        te1 = CLIPTextModel._from_config(text_encoder_config("text_encoder"))
        te2 = CLIPTextModelWithProjection(text_encoder_config("text_encoder_2"))
    return lora, [te1, te2], unet


def text_encoder_config(name: str) -> Any:
    """The bundled SDXL config of ``text_encoder`` or ``text_encoder_2`` (kohya's values)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**json.loads((SDXL_CONFIGS / name / "config.json").read_text(encoding="utf-8")))


def kohya_fresh_names(lora: Any, text_encoders: list[Any], unet: Any, options: dict[str, Any]) -> list[str]:
    """The modules kohya's ``create_network`` makes for these ranks (what kohya would train)."""
    extra = {key: str(options[key]) for key in ("conv_dim", "conv_alpha") if key in options}
    network = lora.create_network(1.0, options["network_dim"], options["network_alpha"], None, text_encoders, unet,
                                  **extra)
    return sorted(module.lora_name for module in network.text_encoder_loras + network.unet_loras)


def kohya_deltas(lora: Any, text_encoders: list[Any], unet: Any, file: Path, inputs: dict[str, torch.Tensor],
                 for_inference: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load ``file`` as kohya does and run every module's forward with the layer's output zeroed."""
    network, weights = lora.create_network_from_weights(1.0, str(file), None, text_encoders, unet,
                                                       for_inference=for_inference)
    modules = network.text_encoder_loras + network.unet_loras
    network.apply_to(text_encoders, unet, apply_text_encoder=True, apply_unet=True)
    loaded = network.load_state_dict(weights, strict=False)  # strictness checked below, with the names
    network.eval()
    deltas = {}
    with torch.no_grad():
        for module in modules:
            module.org_forward = lambda x: torch.zeros((), dtype=x.dtype)  # the base layer's share
            deltas[module.lora_name] = module(inputs[module.lora_name]).contiguous()
    report = {
        "class": type(modules[0]).__name__,
        "modules": [module.lora_name for module in modules],
        "missing": list(loaded.missing_keys),
        "unexpected": list(loaded.unexpected_keys),
    }
    return report, deltas


def text_encoder_outputs(text_encoders: list[Any], tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """What SDXL takes from its text encoders: both penultimate layers and TE2's projected pooled output
    (and both last layers)."""
    outputs = {}
    with torch.no_grad():
        for index, encoder in enumerate(text_encoders, start=1):
            out = encoder(tokens, output_hidden_states=True)
            outputs[f"te{index}.last"] = out.last_hidden_state
            outputs[f"te{index}.penultimate"] = out.hidden_states[-2]
        outputs["te2.text_embeds"] = out.text_embeds
    return {name: value.contiguous() for name, value in outputs.items()}


def kohya_text_encoder_forward(lora: Any, unet: Any, workdir: Path) -> dict[str, torch.Tensor]:
    """Both text encoders with the weights of ``te1/te2.safetensors``, bare then with kohya's
    network loaded from the LierLa file."""
    from accelerate import init_empty_weights
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokens = load_file(str(workdir / "tokens.safetensors"))["tokens"]
    text_encoders = []
    for index, cls in enumerate((CLIPTextModel, CLIPTextModelWithProjection), start=1):
        with init_empty_weights():
            encoder = cls._from_config(text_encoder_config(f"text_encoder{'_2' if index == 2 else ''}"))
        weights = load_file(str(workdir / f"te{index}.safetensors"))
        # transformers 5 (adapt's venv) has no ``text_model.`` in CLIPTextModel's keys; 4.x (kohya's) has
        keys = {key: key if key in weights else key.removeprefix("text_model.") for key in encoder.state_dict()}
        assert sorted(keys.values()) == sorted(weights), f"te{index}: other keys than transformers' {keys}"
        encoder.load_state_dict({key: weights[found] for key, found in keys.items()}, strict=True, assign=True)
        text_encoders.append(encoder.eval())
    outputs = {f"base.{name}": value for name, value in text_encoder_outputs(text_encoders, tokens).items()}
    network, state = lora.create_network_from_weights(1.0, str(workdir / "lierla.safetensors"), None, text_encoders,
                                                     unet, for_inference=True)
    network.apply_to(text_encoders, unet, apply_text_encoder=True, apply_unet=True)
    network.load_state_dict(state, strict=True)
    network.eval()
    outputs |= {f"patched.{name}": value for name, value in text_encoder_outputs(text_encoders, tokens).items()}
    return outputs


def kohya_worker(sd_scripts: Path, workdir: Path, kinds: list[str], modes: list[bool], forward: bool) -> None:
    import logging

    import diffusers
    import transformers

    logging.disable(logging.WARNING)
    lora, text_encoders, unet = kohya_models(sd_scripts)
    inputs = load_file(str(workdir / "inputs.safetensors"))
    # create_network first: kohya's create_network_from_weights extends the class's U-Net target
    # list in place (adds the ResNet/sampler blocks), which would change later fresh networks
    report: dict[str, Any] = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "diffusers": diffusers.__version__},
        "fresh": {kind: kohya_fresh_names(lora, text_encoders, unet, NETWORKS[kind][1]) for kind in kinds},
    }
    for kind in kinds:
        for for_inference in modes:
            loaded, deltas = kohya_deltas(lora, text_encoders, unet, workdir / f"{kind}.safetensors", inputs,
                                          for_inference)
            report[f"{kind}/{for_inference}"] = loaded
            save_file(deltas, str(workdir / f"kohya_{kind}_{for_inference}.safetensors"))
    if forward:
        save_file(kohya_text_encoder_forward(lora, unet, workdir), str(workdir / "kohya_forward.safetensors"))
    (workdir / "kohya.json").write_text(json.dumps(report), encoding="utf-8")


# -- adapt's venv ---------------------------------------------------------------------------------
def random_input(module: Any, generator: torch.Generator) -> torch.Tensor:
    """A batch for the module's layer: (2, 5, in) tokens for a Linear, (1, in, 6, 6) for a conv."""
    down = module.lora_down
    if isinstance(down, torch.nn.Conv2d):
        return torch.randn(1, down.in_channels, 6, 6, generator=generator)
    return torch.randn(2, 5, down.in_features, generator=generator)


def write_adapters(workdir: Path, kinds: list[str]) -> dict[str, list[str]]:
    """The adapter files, the inputs and adapt's deltas (from the files read back); module names per file."""
    from adapters_core.metadata import network_metadata
    from adapters_core.network import Network
    from adapters_core.plugins import get_registry

    registry = get_registry()
    family = registry.family("sdxl")
    components = family.build_components(device="meta")
    generator = torch.Generator().manual_seed(0)
    inputs: dict[str, torch.Tensor] = {}
    names = {}
    for kind in kinds:
        network_type, options = NETWORKS[kind]
        network = Network.create(network_type, family=family, components=components, options=options)
        parameters = torch.Generator().manual_seed(1 + list(NETWORKS).index(kind))
        with torch.no_grad():
            for parameter in network.parameters():  # lora_down and lora_up, both non-zero
                parameter.copy_(torch.randn(parameter.shape, generator=parameters) * 0.05)
        network_args = {k: v for k, v in options.items() if k.startswith("conv_")}
        metadata = network_metadata(network_module=registry.get(network_type).kohya_module, dim=options["network_dim"],
                                    alpha=options["network_alpha"], network_args=network_args, family=family,
                                    v_parameterization=False)
        file = workdir / f"{kind}.safetensors"
        network.save(file, dtype=torch.float16, metadata=metadata, overwrite=True)
        loaded = Network.from_file(file, family=family, components=components).eval()
        deltas = {}
        with torch.no_grad():
            for name, module in loaded.adapter_modules():
                if name not in inputs:
                    inputs[name] = random_input(module, generator)
                deltas[name] = module(inputs[name], torch.zeros(())).contiguous()
        save_file(deltas, str(workdir / f"adapt_{kind}.safetensors"))
        names[kind] = sorted(deltas)
    save_file(inputs, str(workdir / "inputs.safetensors"))
    return names


def adapt_text_encoder_forward(workdir: Path) -> dict[str, torch.Tensor]:
    """Both text encoders with random weights (written with the tokens to ``te1/te2/tokens.safetensors``
    for kohya's side), bare then with adapt's network loaded from the LierLa file."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from adapters_core.network import Network
    from adapters_core.plugins import get_registry

    family = get_registry().family("sdxl")
    torch.manual_seed(0)
    text_encoders = [CLIPTextModel(text_encoder_config("text_encoder")).eval(),
                     CLIPTextModelWithProjection(text_encoder_config("text_encoder_2")).eval()]
    tokens = torch.randint(0, 49408, (2, 77), generator=torch.Generator().manual_seed(0))
    save_file({"tokens": tokens}, str(workdir / "tokens.safetensors"))
    for index, encoder in enumerate(text_encoders, start=1):  # one file each: save_file copies its tensors
        save_file(encoder.state_dict(), str(workdir / f"te{index}.safetensors"))
    outputs = {f"base.{name}": value for name, value in text_encoder_outputs(text_encoders, tokens).items()}
    components = {"text_encoder": text_encoders[0], "text_encoder_2": text_encoders[1],
                  "unet": family.build_components(device="meta")["unet"]}
    network = Network.from_file(workdir / "lierla.safetensors", family=family, components=components).eval()
    network.apply()
    outputs |= {f"patched.{name}": value for name, value in text_encoder_outputs(text_encoders, tokens).items()}
    network.remove()
    return outputs


def compare_forward(adapt: dict[str, torch.Tensor], kohya: dict[str, torch.Tensor], tolerance: float) -> list[str]:
    """Print the text encoders' outputs side by side; the problems found."""
    problems = []
    for name in sorted(key.removeprefix("base.") for key in adapt if key.startswith("base.")):
        base, patched = adapt[f"base.{name}"].double(), adapt[f"patched.{name}"].double()
        scale = patched.abs().max()
        base_error = ((kohya[f"base.{name}"] - base).abs().max() / base.abs().max()).item()
        error = ((kohya[f"patched.{name}"] - patched).abs().max() / scale).item()
        effect = ((patched - base).abs().max() / scale).item()
        print(f"text encoder forward {name:<17} adapter's effect {effect:.2e}; kohya vs adapt: bare {base_error:.2e}, "
              f"with the LierLa file {error:.2e} (relative to the largest output)")
        if error > tolerance:
            problems.append(f"text encoder forward {name}: kohya's patched output differs by {error:.2e} relative")
    return problems


def relative_errors(adapt: dict[str, torch.Tensor], kohya: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per module: the largest difference over the largest entry of adapt's delta."""
    return {name: ((kohya[name].double() - ours.double()).abs().max() / ours.double().abs().max()).item()
            for name, ours in adapt.items()}


def compare(workdir: Path, names: dict[str, list[str]], modes: list[bool], tolerance: float) -> list[str]:
    """Print what kohya did with each file; the problems found."""
    report = json.loads((workdir / "kohya.json").read_text(encoding="utf-8"))
    problems = []
    for kind, ours in names.items():
        fresh = report["fresh"][kind]
        if fresh != ours:
            problems.append(f"{kind}: kohya's create_network makes other modules than adapt's file holds: "
                            f"only kohya's: {sorted(set(fresh) - set(ours))[:10]}, "
                            f"only adapt's: {sorted(set(ours) - set(fresh))[:10]}")
        adapt = load_file(str(workdir / f"adapt_{kind}.safetensors"))
        for for_inference in modes:
            loaded = report[f"{kind}/{for_inference}"]
            kohya = load_file(str(workdir / f"kohya_{kind}_{for_inference}.safetensors"))
            theirs = sorted(loaded["modules"])
            if theirs != ours:
                problems.append(f"{kind}: kohya made modules {sorted(set(theirs) - set(ours))[:10]} and not "
                                f"{sorted(set(ours) - set(theirs))[:10]}")
            for what in ("missing", "unexpected"):
                if loaded[what]:
                    problems.append(f"{kind}: {len(loaded[what])} {what} keys in kohya's load, e.g. {loaded[what][:5]}")
            errors = relative_errors({n: t for n, t in adapt.items() if n in kohya}, kohya)
            worst = max(errors, key=errors.__getitem__)
            print(f"{kind} ({loaded['class']}, for_inference={for_inference}): kohya made {len(theirs)} modules "
                  f"{counts(theirs)}, fresh create_network {len(fresh)}; strict load: {len(loaded['missing'])} "
                  f"missing, {len(loaded['unexpected'])} unexpected; max relative delta error "
                  f"{errors[worst]:.2e} ({worst})")
            if errors[worst] > tolerance:
                problems.append(f"{kind}: {worst}: kohya's delta differs by {errors[worst]:.2e} relative")
    return problems


def kohya_commit(sd_scripts: Path) -> str:
    if not (sd_scripts / ".git").exists():
        return "(not a git clone, commit unknown)"
    done = subprocess.run(["git", "-C", str(sd_scripts), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd-scripts", help="kohya sd-scripts checkout (default: $KOHYA_SD_SCRIPTS or bench/.kohya)")
    parser.add_argument("--workdir", help="folder for the files (default: a temporary one)")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest relative delta error accepted")
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS),
                        help="the adapter files to check (default: all)")
    parser.add_argument("--for-inference", nargs="+", choices=["false", "true"], default=["false", "true"],
                        help="create_network_from_weights' for_inference: kohya's LoRAModule (false, training) "
                        "and LoRAInfModule (true, generation); default both")
    parser.add_argument("--text-encoders", action="store_true",
                        help="also compare both text encoders' full forward with random weights (peak 4.2 GB)")
    parser.add_argument("--forward-tolerance", type=float, default=1e-4,
                        help="largest relative error of the text encoders' patched outputs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    modes = [mode == "true" for mode in args.for_inference]
    if args.worker:
        kohya_worker(Path(args.sd_scripts), Path(args.workdir), args.networks, modes, args.text_encoders)
        return
    from kohya_env import kohya_command, kohya_or_skip

    if (found := kohya_or_skip(args.sd_scripts)) is None:
        return
    sd_scripts, python = found
    with tempfile.TemporaryDirectory() as temporary:
        workdir = Path(args.workdir or temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.text_encoders and "lierla" not in args.networks:
            parser.error("--text-encoders loads the LierLa file: include lierla in --networks")
        names = write_adapters(workdir, args.networks)
        adapt_forward = adapt_text_encoder_forward(workdir) if args.text_encoders else {}
        _, env = kohya_command(python, sd_scripts, "")
        worker = [str(python), __file__, "--worker", "--sd-scripts", str(sd_scripts), "--workdir", str(workdir)]
        worker += ["--networks", *args.networks, "--for-inference", *args.for_inference]
        worker += ["--text-encoders"] if args.text_encoders else []
        done = subprocess.run(worker, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            raise SystemExit(f"kohya's side failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        import diffusers
        import transformers

        versions = json.loads((workdir / "kohya.json").read_text(encoding="utf-8"))["versions"]
        print(f"kohya sd-scripts {kohya_commit(sd_scripts)} at {sd_scripts}; kohya venv: {versions}; adapt venv: "
              f"torch {torch.__version__}, transformers {transformers.__version__}, diffusers {diffusers.__version__}")
        problems = compare(workdir, names, modes, args.tolerance)
        if adapt_forward:
            kohya_forward = load_file(str(workdir / "kohya_forward.safetensors"))
            problems += compare_forward(adapt_forward, kohya_forward, args.forward_tolerance)
    for problem in problems:
        print(f"problem: {problem}")
    print("kohya loads adapt's SDXL files: " + ("no, see above" if problems else "yes, same outputs"))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
