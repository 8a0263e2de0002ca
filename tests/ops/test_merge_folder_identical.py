"""A Diffusers folder merged into a folder is streamed tensor by tensor and writes exactly what
loading the model, merging in place and ``save_pretrained`` write.

The reference is the same folder with its U-Net saved as a pickle (``.bin``): those weights
cannot be memory-mapped, so that folder is merged by loading it, today's path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tool_support import TinyFiles, adapt, random_lora, tiny, write_file  # noqa: F401 - fixtures

from adapt_sdxl.tiny import write_tiny_sdxl_model
from adapters_core.errors import NonFiniteError
from adapters_core.models import load_sd_model
from adapters_core.ops import merge_model
from adapters_core.ops.merge_model import merge_into_model

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
BLOCKS = ",".join(["0"] * 13 + ["0.5"] + ["1"] * 12)  # BASE, IN00..IN11, MID, OUT00..OUT11


def pickled_unet_copy(folder: Path, root: Path) -> Path:
    """The folder with its U-Net weights as ``diffusion_pytorch_model.bin`` (same tensors)."""
    copy = root / f"{folder.name}_bin"
    shutil.copytree(folder, copy)
    weights = copy / UNET_WEIGHTS
    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    return copy


def tensors_by_file(folder: Path) -> dict[str, dict[str, tuple[torch.dtype, bytes]]]:
    """Every tensor of every ``.safetensors`` of a folder: file -> key -> (dtype, raw bytes)."""
    found: dict[str, dict[str, tuple[torch.dtype, bytes]]] = {}
    for file in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            found[str(file.relative_to(folder))] = {
                key: (t.dtype, t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
                for key in handle.keys()
                for t in [handle.get_tensor(key)]
            }
    return found


def assert_identical(streamed: Path, loaded: Path) -> None:
    """Same weight files, keys, dtypes and bytes."""
    ours, theirs = tensors_by_file(streamed), tensors_by_file(loaded)
    assert ours.keys() == theirs.keys() and len(ours) >= 3
    for file, tensors in ours.items():
        assert tensors.keys() == theirs[file].keys(), file
        for key, saved in tensors.items():
            assert saved == theirs[file][key], f"{file}: {key}"


def changed_keys(streamed: Path, source: Path, file: str) -> int:
    with safe_open(str(streamed / file), "pt") as ours, safe_open(str(source / file), "pt") as base:
        return sum(not torch.equal(ours.get_tensor(k).float(), base.get_tensor(k).float()) for k in ours.keys())


@pytest.mark.parametrize(
    ("precision", "save_precision"), [("float", "fp16"), ("float", None), ("fp16", "float"), ("bf16", "fp16")]
)
def test_sd_folder_two_adapters_streamed_equals_loaded(
    tiny: TinyFiles, tmp_path: Path, precision: str, save_precision: str | None
) -> None:
    lierla = write_file(tmp_path / "a.safetensors", random_lora(tiny.model, dim=4, alpha=2.0, seed=1))
    c3lier = write_file(
        tmp_path / "b.safetensors", random_lora(tiny.model, dim=8, alpha=None, conv_dim=2, conv_alpha=1.0, seed=2)
    )
    reference = pickled_unet_copy(tiny.folder, tmp_path)
    streamed, loaded = (
        merge_into_model(
            source, [lierla, c3lier], [0.7, -0.4], save_to=tmp_path / name, precision=precision,
            save_precision=save_precision,
        )
        for name, source in (("streamed", tiny.folder), ("loaded", reference))
    )
    assert_identical(streamed, loaded)
    assert changed_keys(streamed, tiny.folder, UNET_WEIGHTS) > 100
    assert changed_keys(streamed, tiny.folder, "text_encoder/model.safetensors") >= 12
    for name in ("model_index.json", "scheduler/scheduler_config.json", "tokenizer/tokenizer.json", "unet/config.json"):
        assert (streamed / name).read_bytes() == (tiny.folder / name).read_bytes(), name
    assert load_sd_model(streamed).family.name == "tiny"


def test_block_weights_and_allow_unmatched_on_the_streamed_folder(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    tensors = random_lora(tiny.model, dim=4, seed=3)
    tensors["lora_unet_no_such_layer.lora_down.weight"] = torch.ones(4, 8)
    tensors["lora_unet_no_such_layer.lora_up.weight"] = torch.ones(8, 4)
    path = write_file(tmp_path / "extra.safetensors", tensors)
    reference = pickled_unet_copy(tiny.folder, tmp_path)
    outputs = {}
    for name, source in (("streamed", tiny.folder), ("loaded", reference)):
        base = ["merge", "--sd_model", source, "--models", path, "--ratios", "0.8", "--save_to", tmp_path / name]
        code, _, err = adapt(*base, "--block_weights", BLOCKS)
        assert code == 2 and "no_such_layer" in err and not (tmp_path / name).exists()
        assert adapt(*base, "--block_weights", BLOCKS, "--allow_unmatched")[0] == 0
        outputs[name] = tmp_path / name
    assert_identical(outputs["streamed"], outputs["loaded"])
    # the text encoder (BASE) and the down blocks are weighted 0: their tensors are the source's
    assert changed_keys(outputs["streamed"], tiny.folder, "text_encoder/model.safetensors") == 0
    everything = merge_into_model(tiny.folder, [path], [0.8], save_to=tmp_path / "all", allow_unmatched=True)
    weighted = changed_keys(outputs["streamed"], tiny.folder, UNET_WEIGHTS)
    assert 0 < weighted < changed_keys(everything, tiny.folder, UNET_WEIGHTS)


def test_tiny_sdxl_folder_streamed_equals_loaded(tmp_path: Path) -> None:
    folder = tmp_path / "sdxl"
    write_tiny_sdxl_model(folder, seed=0)
    model = load_sd_model(folder)
    paths = [
        write_file(tmp_path / "a.safetensors", random_lora(model, dim=4, alpha=2.0, seed=4)),
        write_file(tmp_path / "b.safetensors", random_lora(model, dim=2, alpha=1.0, conv_dim=2, seed=5)),
    ]
    reference = pickled_unet_copy(folder, tmp_path)
    streamed = merge_into_model(folder, paths, [1.0, 0.5], save_to=tmp_path / "streamed", save_precision="fp16")
    loaded = merge_into_model(reference, paths, [1.0, 0.5], save_to=tmp_path / "loaded", save_precision="fp16")
    assert_identical(streamed, loaded)
    assert changed_keys(streamed, folder, "text_encoder_2/model.safetensors") > 10
    assert load_sd_model(streamed).family.name == "tiny_sdxl"


def test_sharded_weights_and_stale_variants(tiny: TinyFiles, tmp_path: Path) -> None:
    """Shards named by an index are read as one file; a weights variant of an adapted component
    is not copied (it would be the unmerged model)."""
    path = write_file(tmp_path / "a.safetensors", random_lora(tiny.model, dim=4, seed=6))
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny.folder, sharded)
    unet = load_file(sharded / UNET_WEIGHTS)
    (sharded / UNET_WEIGHTS).unlink()
    keys = sorted(unet)
    weight_map = {}
    for i, part in enumerate((keys[::2], keys[1::2])):
        shard = f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors"
        save_file({k: unet[k] for k in part}, sharded / "unet" / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (sharded / f"{UNET_WEIGHTS}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    save_file({k: v.half() for k, v in unet.items()}, sharded / "unet/diffusion_pytorch_model.fp16.safetensors")
    plain = merge_into_model(tiny.folder, [path], [1.0], save_to=tmp_path / "plain")
    merged = merge_into_model(sharded, [path], [1.0], save_to=tmp_path / "merged")
    assert sorted(p.name for p in (merged / "unet").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert_identical(merged, plain)


def test_v_parameterization_is_written_to_the_scheduler(tiny: TinyFiles, tmp_path: Path) -> None:
    path = write_file(tmp_path / "a.safetensors", random_lora(tiny.model, dim=4, seed=7))
    merged = merge_into_model(tiny.folder, [path], [1.0], save_to=tmp_path / "v", v_parameterization=True)
    assert load_sd_model(merged).v_parameterization
    assert not load_sd_model(tiny.folder).v_parameterization


def test_non_finite_folder_merge_writes_nothing(tiny: TinyFiles, tmp_path: Path) -> None:
    huge = write_file(tmp_path / "huge.safetensors", random_lora(tiny.model, dim=4, alpha=4.0, seed=3, scale=300.0))
    out = tmp_path / "out"
    with pytest.raises(NonFiniteError, match="non-finite"):
        merge_into_model(tiny.folder, [huge], [1.0], save_to=out, save_precision="fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.safetensors"]
    assert merge_into_model(tiny.folder, [huge], [1.0], save_to=out).is_dir()  # float32 holds it


def test_an_existing_folder_is_replaced_only_with_overwrite(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    path = write_file(tmp_path / "a.safetensors", random_lora(tiny.model, dim=4, seed=8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    base = ("merge", "--sd_model", tiny.folder, "--models", path, "--save_to", out)
    code, _, err = adapt(*base)
    assert code == 2 and "--overwrite" in err and (out / "keep.txt").read_text() == "keep"
    assert adapt(*base, "--overwrite")[0] == 0
    assert not (out / "keep.txt").exists() and (out / UNET_WEIGHTS).is_file()


def test_text_model_spelling_of_older_transformers_is_streamed_and_kept(
    tiny: TinyFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folders saved by transformers 4 spell the text encoder ``text_model.…`` and carry the
    ``position_ids`` buffer; loading maps both away and saving writes the prefix back."""
    path = write_file(tmp_path / "a.safetensors", random_lora(tiny.model, dim=4, seed=9))
    older = tmp_path / "older"
    shutil.copytree(tiny.folder, older)
    weights = older / "text_encoder/model.safetensors"
    tensors = {f"text_model.{k}": v for k, v in load_file(weights).items()}
    tensors["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(tensors, weights, metadata={"format": "pt"})
    reference = merge_into_model(pickled_unet_copy(older, tmp_path), [path], [1.0], save_to=tmp_path / "loaded")

    def not_streamed(*args: object) -> None:
        raise AssertionError("the folder was loaded, not streamed")

    monkeypatch.setattr(merge_model, "_merge_loaded", not_streamed)
    streamed = merge_into_model(older, [path], [1.0], save_to=tmp_path / "streamed")
    assert_identical(streamed, reference)
    with safe_open(str(streamed / "text_encoder/model.safetensors"), "pt") as handle:
        assert all(k.startswith("text_model.") for k in handle.keys()) and len(handle.keys()) == len(tensors) - 1


def test_only_a_folder_unlike_the_bundled_model_is_built_from_its_configs(
    tiny: TinyFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny folder holds exactly the keys of the family's shipped table: no component is
    built. One more key in a file (an older transformers' ``position_ids``) and the components
    come from the folder's configs, whose state dicts leave that key out."""
    from adapters_core.ops import merge_folder

    built: list[Path | None] = []
    build = merge_folder.weighted_components

    def counted(family: object, folder: Path | None = None) -> object:
        built.append(folder)
        return build(family, folder)  # type: ignore[arg-type]

    monkeypatch.setattr(merge_folder, "weighted_components", counted)
    path = write_file(tmp_path / "a.safetensors", random_lora(tiny.model, dim=4, seed=9))
    merge_into_model(tiny.folder, [path], [1.0], save_to=tmp_path / "same")
    assert built == []
    other = tmp_path / "other"
    shutil.copytree(tiny.folder, other)
    weights = other / "text_encoder/model.safetensors"
    save_file({**load_file(weights), "embeddings.position_ids": torch.arange(77)[None]}, weights, metadata={"format": "pt"})
    merge_into_model(other, [path], [1.0], save_to=tmp_path / "built")
    assert built == [other]
    assert_identical(tmp_path / "built", tmp_path / "same")  # the extra key is left out, as loading and saving do
