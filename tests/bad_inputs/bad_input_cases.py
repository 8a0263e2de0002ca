"""The bad inputs, command by command (see bad_input_table.py for the builders)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bad_input_table import (
    Argv,
    Case,
    Needle,
    Where,
    convert,
    existing,
    extract,
    from_dylora,
    generate,
    lora,
    merge_adapters,
    merge_into_model,
    resize,
    resize_images,
    svd_merge,
    train,
)

NOT_WRITABLE = "not writable"
FULL = "no space left"

# Every reader of adapter files, given each broken container: the line names the file (and the fault).
BROKEN_FILES: list[tuple[str, Needle]] = [
    ("corrupt_header.safetensors", ("corrupt_header.safetensors", "corrupt safetensors header")),
    ("huge_header.safetensors", "huge_header.safetensors"),
    ("truncated.safetensors", "truncated.safetensors"),
    ("empty.safetensors", "empty.safetensors"),
    ("truncated.ckpt", "truncated.ckpt"),
    ("evil.ckpt", "evil.ckpt"),
    ("evil.pt", "evil.pt"),
    ("missing.safetensors", "missing.safetensors"),
    ("a_folder", "a_folder"),
]
NON_FINITE: list[tuple[str, Needle]] = [
    ("nan.safetensors", ("nan.safetensors", "NaN")),
    ("inf.safetensors", ("inf.safetensors", "infinite")),
    ("nan_alpha.safetensors", ("nan_alpha.safetensors", "NaN")),
]


def _per_file(prefix: str, build: Callable[[str], Argv], files: list[tuple[str, Needle]]) -> list[Case]:
    return [Case(f"{prefix}-{name.replace('.', '_')}", build(name), needle) for name, needle in files]


def output_cases(command: str, argv: Callable[[Where, Path], Sequence[object]]) -> list[Case]:
    """The output faults of a command writing one adapter file (``argv(where, output)``)."""
    return [
        Case(f"{command}-unknown-extension", lambda w: argv(w, w.t / "out.xyz"), "out.xyz"),
        Case(f"{command}-existing-output", lambda w: argv(w, w.t / "out.safetensors"), "--overwrite",
             setup=existing("out.safetensors")),
        Case(f"{command}-read-only-folder", lambda w: argv(w, w.ro / "out.safetensors"), NOT_WRITABLE, place="ro"),
        Case(f"{command}-full-disk", lambda w: argv(w, w.full / "out.safetensors"), FULL, place="full"),
    ]


def device_cases(command: str, build: Callable[..., Argv]) -> list[Case]:
    """A device name that is no device, and one this CPU-only machine lacks."""
    return [
        Case(f"{command}-device-banana", build("--device", "banana"), "--device"),
        Case(f"{command}-device-cuda", build("--device", "cuda"), "cuda"),
    ]


def bad_values(command: str, build: Callable[..., Argv], rows: list[tuple[str, str, str]]) -> list[Case]:
    """``(id, flag, value)`` rows: a value out of the flag's range; the line must name the flag."""
    return [Case(f"{command}-{name}", build(flag, value), flag) for name, flag, value in rows]


def bad_files(command: str, build: Callable[..., Argv], rows: list[tuple[str, str, str]]) -> list[Case]:
    """``(id, flag, input file)`` rows: a broken input; the line must name the file."""
    return [Case(f"{command}-{name}", build(flag, lambda w, f=file: w.i / f), file) for name, flag, file in rows]


MERGE = [
    *_per_file("merge", merge_adapters, BROKEN_FILES),
    *_per_file("merge", merge_adapters, NON_FINITE),
    Case("merge-vector-alpha", merge_adapters("vector_alpha.safetensors"), "vector_alpha.safetensors"),
    Case("merge-nan-into-model", merge_into_model("nan.safetensors"), "nan.safetensors"),
    Case("merge-wrong-shapes", merge_into_model("other_model.safetensors"), "other_model.safetensors"),
    Case("merge-into-evil-checkpoint",
         lambda w: ["merge", "--sd_model", w.i / "evil.ckpt", "--models", lora(w), "--save_to", w.t / "m.ckpt"],
         "evil.ckpt"),
    Case("merge-into-truncated-checkpoint",
         lambda w: ["merge", "--sd_model", w.i / "truncated.ckpt", "--models", lora(w), "--save_to", w.t / "m.ckpt"],
         "truncated.ckpt"),
    Case("merge-into-text-file",
         lambda w: ["merge", "--sd_model", w.i / "notes.txt", "--models", lora(w), "--save_to", w.t / "m.ckpt"],
         "notes.txt"),
    Case("merge-alpha-1e30-fp16", merge_into_model("huge_alpha.safetensors", "--save_precision", "fp16"),
         "huge_alpha.safetensors", found_by_work=True),
    Case("merge-ratios-nan", merge_adapters("lora.safetensors", "--ratios", "nan"), "--ratios"),
    Case("merge-ratios-inf", merge_adapters("lora.safetensors", "--ratios", "inf"), "--ratios"),
    Case("merge-ratios-count", merge_adapters("lora.safetensors", "--ratios", "1", "0.5"), "--ratios"),
    Case("merge-precision-fp8", merge_adapters("lora.safetensors", "--precision", "fp8"), "--precision"),
    Case("merge-no-models", lambda w: ["merge", "--save_to", w.t / "out.safetensors"], "--models"),
    Case("merge-output-under-a-file",
         lambda w: ["merge", "--models", lora(w), "--save_to", w.t / "afile" / "out.safetensors"], "afile",
         setup=existing("afile")),
    Case("merge-model-read-only-folder", merge_into_model("lora.safetensors", save_to=lambda w: w.ro / "m.safetensors"),
         NOT_WRITABLE, place="ro"),
    *output_cases("merge", lambda w, out: ["merge", "--models", lora(w), "--save_to", out]),
    Case("merge-model-full-disk", merge_into_model("lora.safetensors", save_to=lambda w: w.full / "m.safetensors"),
         FULL, place="full"),
]

SVD_MERGE = [
    *_per_file("svd-merge", svd_merge, BROKEN_FILES[:6]),
    *_per_file("svd-merge", svd_merge, NON_FINITE),
    Case("svd-merge-vector-alpha", svd_merge("vector_alpha.safetensors"), "vector_alpha.safetensors"),
    Case("svd-merge-wrong-shapes", svd_merge("other_model.safetensors"), "other_model.safetensors"),
    *bad_values("svd-merge", lambda *extra: svd_merge("lora.safetensors", *extra), [
        ("rank-0", "--new_rank", "0"), ("rank-negative", "--new_rank", "-4"), ("ratios-nan", "--ratios", "nan"),
        ("clamp-0", "--clamp_quantile", "0"), ("clamp-1.5", "--clamp_quantile", "1.5"),
    ]),
    *device_cases("svd-merge", lambda *extra: svd_merge("lora.safetensors", *extra)),
    *output_cases("svd-merge", lambda w, out: ["svd-merge", "--models", lora(w), "--save_to", out]),
]

RESIZE = [
    *_per_file("resize", resize, BROKEN_FILES),
    *_per_file("resize", resize, NON_FINITE),
    Case("resize-vector-alpha", resize("vector_alpha.safetensors"), "vector_alpha.safetensors"),
    Case("resize-rank-0", resize("lora.safetensors", "--new_rank", "0"), "--new_rank"),
    *device_cases("resize", lambda *extra: resize("lora.safetensors", *extra)),
    *output_cases("resize", lambda w, out: ["resize", "--model", lora(w), "--save_to", out]),
    Case("resize-dynamic-param-negative",
         resize("lora.safetensors", "--dynamic_method", "sv_ratio", "--dynamic_param", "-1"), "--dynamic_param"),
    Case("resize-sv-fro-above-1",
         resize("lora.safetensors", "--dynamic_method", "sv_fro", "--dynamic_param", "2"), "--dynamic_param"),
]

EXTRACT = [
    Case("extract-from-dylora-not-dylora",
         from_dylora("lora.safetensors", "--unit", "2"), "lora.safetensors"),
    Case("extract-from-dylora-nan", from_dylora("nan.safetensors", "--unit", "2"), "nan.safetensors"),
    Case("extract-from-dylora-missing",
         from_dylora("missing.safetensors", "--unit", "2"), "missing.safetensors"),
    Case("extract-no-model-org",
         lambda w: ["extract", "--model_tuned", w.i / "model", "--save_to", w.t / "o.safetensors"], "--model_org"),
    Case("extract-tuned-missing", extract("--model_tuned", lambda w: w.i / "missing.safetensors"),
         "missing.safetensors"),
    Case("extract-org-evil", extract("--model_org", lambda w: w.i / "evil.ckpt"), "evil.ckpt"),
    Case("extract-org-truncated", extract("--model_org", lambda w: w.i / "truncated.ckpt"), "truncated.ckpt"),
    Case("extract-org-corrupt-header", extract("--model_org", lambda w: w.i / "corrupt_header.safetensors"),
         "corrupt_header.safetensors"),
    Case("extract-dim-0", extract("--dim", "0"), "--dim"),
    Case("extract-unit-0", from_dylora("lora.safetensors", "--unit", "0"), "--unit"),
    Case("extract-min-diff-negative", extract("--min_diff", "-1"), "--min_diff"),
    *device_cases("extract", extract),
    *output_cases("extract", lambda w, out: [*extract()(w), "--save_to", out]),
]

INSPECT = [
    *_per_file("inspect", lambda name: (lambda w: ["inspect", w.i / name]), BROKEN_FILES),
    *_per_file("inspect", lambda name: (lambda w: ["inspect", w.i / name]), NON_FINITE),
    Case("inspect-vector-alpha", lambda w: ["inspect", w.i / "vector_alpha.safetensors"], "vector_alpha.safetensors"),
    Case("inspect-text-file", lambda w: ["inspect", w.i / "notes.txt"], "notes.txt"),
    Case("inspect-no-file", lambda w: ["inspect"], "FILE"),
]

CHECK = [
    Case("check-missing", lambda w: ["check", w.i / "missing.safetensors"], "missing.safetensors"),
    Case("check-corrupt-header", lambda w: ["check", w.i / "corrupt_header.safetensors"], "corrupt_header"),
    Case("check-evil", lambda w: ["check", w.i / "evil.ckpt", "--model", w.i / "model"], "evil.ckpt"),
    Case("check-model-evil", lambda w: ["check", lora(w), "--model", w.i / "evil.ckpt"], "evil.ckpt"),
    Case("check-model-missing", lambda w: ["check", lora(w), "--model", w.i / "missing.safetensors"], "missing"),
    Case("check-model-banana", lambda w: ["check", lora(w), "--model", "banana"], "banana"),
    Case("check-vector-alpha", lambda w: ["check", w.i / "vector_alpha.safetensors", "--model", w.i / "model"],
         "vector_alpha.safetensors"),
]

CONVERT = [
    *_per_file("convert", convert, BROKEN_FILES[:6]),
    Case("convert-nan", convert("nan.safetensors"), "nan.safetensors"),
    Case("convert-to-banana", lambda w: ["convert", lora(w), w.t / "o.safetensors", "--to", "banana"], "--to"),
    Case("convert-unknown-extension", convert("lora.safetensors", "out.xyz"), "out.xyz"),
    Case("convert-existing-output", convert("lora.safetensors"), "--overwrite", setup=existing("out.safetensors")),
    Case("convert-onto-itself", lambda w: ["convert", lora(w), lora(w), "--to", "kohya"], "--overwrite"),
    Case("convert-read-only-folder", lambda w: ["convert", lora(w), w.ro / "o.safetensors", "--to", "diffusers"],
         NOT_WRITABLE, place="ro"),
    Case("convert-full-disk", lambda w: ["convert", lora(w), w.full / "o.safetensors", "--to", "diffusers"],
         FULL, place="full"),
]

GENERATE = [
    *bad_values("generate", generate, [("steps-0", "--steps", "0"), ("width-0", "--W", "0"),
                                       ("height-negative", "--H", "-32"), ("scale-nan", "--scale", "nan")]),
    *device_cases("generate", generate),
    Case("generate-mul-nan", generate("--network_weights", lora, "--network_mul", "nan"), "--network_mul"),
    Case("generate-mul-count", generate("--network_weights", lora, "--network_mul", "1", "2"), "--network_mul"),
    *bad_files("generate", generate, [
        ("nan-adapter", "--network_weights", "nan.safetensors"),
        ("inf-adapter", "--network_weights", "inf.safetensors"),
        ("vector-alpha", "--network_weights", "vector_alpha.safetensors"),
        ("wrong-shapes", "--network_weights", "other_model.safetensors"), ("evil-model", "--model", "evil.ckpt"),
        ("truncated-model", "--model", "truncated.ckpt"), ("missing-model", "--model", "missing.safetensors"),
    ]),
    Case("generate-clip-skip-5", generate("--clip_skip", "5"), "--clip_skip"),
    Case("generate-prompts-not-utf8", generate("--from_file", lambda w: w.i / "prompts_not_utf8.txt", prompt=False),
         "UTF-8"),
    Case("generate-outdir-is-a-file", generate("--outdir", lambda w: w.t / "afile"), "afile", setup=existing("afile")),
    Case("generate-read-only-folder", generate("--outdir", lambda w: w.ro / "out"), NOT_WRITABLE, place="ro"),
    Case("generate-full-disk", generate("--outdir", lambda w: w.full / "out", "--W", "64", "--H", "64"), FULL,
         place="full"),
]

TRAIN = [
    *bad_values("train", train, [
        ("lr-negative", "--learning_rate", "-1e-4"), ("lr-nan", "--learning_rate", "nan"),
        ("unet-lr-inf", "--unet_lr", "inf"), ("dim-0", "--network_dim", "0"), ("dim-negative", "--network_dim", "-4"),
        ("dropout-1.5", "--network_dropout", "1.5"), ("steps-0", "--max_train_steps", "0"),
        ("clip-skip-0", "--clip_skip", "0"),
    ]),
    Case("train-min-above-max-timestep", train("--min_timestep", "800", "--max_timestep", "200"), "--min_timestep"),
    Case("train-config-not-utf8", train("--config_file", lambda w: w.i / "not_utf8.toml"), "UTF-8"),
    Case("train-dataset-not-utf8", train("--dataset_config", lambda w: w.i / "not_utf8.toml", data_dir=False), "UTF-8"),
    Case("train-dataset-not-toml", train("--dataset_config", lambda w: w.i / "not_toml.toml", data_dir=False), "TOML"),
    Case("train-data-dir-missing", train("--train_data_dir", lambda w: w.i / "missing"), "missing"),
    Case("train-save-as-xyz", train("--save_model_as", "xyz"), "save_model_as"),
    Case("train-output-dir-is-a-file", train("--output_dir", lambda w: w.t / "afile"), "afile",
         setup=existing("afile")),
    Case("train-existing-output", train(), "--overwrite", setup=existing("out/last.safetensors")),
    Case("train-read-only-folder", train("--output_dir", lambda w: w.ro / "out"), NOT_WRITABLE, place="ro"),
    Case("train-full-disk", train("--output_dir", lambda w: w.full / "out"), FULL, place="full"),
    *bad_files("train", train, [
        ("evil-model", "--pretrained_model_name_or_path", "evil.ckpt"),
        ("truncated-model", "--pretrained_model_name_or_path", "truncated.ckpt"),
        ("missing-model", "--pretrained_model_name_or_path", "missing.safetensors"),
        ("weights-nan", "--network_weights", "nan.safetensors"),
        ("weights-wrong-shapes", "--network_weights", "other_model.safetensors"),
        ("config-missing", "--config_file", "missing.toml"),
    ]),
    *[Case(f"train-config-{name}", train("--config_file", lambda w, f=file: w.i / f), key) for name, file, key in [
        ("negative-lr", "negative_lr.toml", "learning_rate"), ("negative-dim", "negative_dim.toml", "network_dim"),
        ("nan-lr", "nan_lr.toml", "learning_rate"),
    ]],
    Case("train-clip-skip-5", train("--clip_skip", "5"), "--clip_skip"),
    Case("train-full-bf16-without-bf16", train("--full_bf16"), ("--full_bf16", "--mixed_precision bf16")),
    Case("train-full-fp16-with-bf16", train("--mixed_precision", "bf16", "--full_fp16"),
         ("--full_fp16", "--mixed_precision fp16")),
    Case("train-full-bf16-and-fp16", train("--mixed_precision", "bf16", "--full_bf16", "--full_fp16"),
         ("--full_bf16", "--full_fp16")),
    Case("train-full-fp16-on-cpu", train("--mixed_precision", "fp16", "--full_fp16"), ("--full_fp16", "CUDA")),
]

QUICKSTART = [
    Case("quickstart-output-dir-is-a-file", lambda w: ["quickstart", "--output_dir", w.t / "afile"], "afile",
         setup=existing("afile")),
    Case("quickstart-read-only-folder", lambda w: ["quickstart", "--output_dir", w.ro / "qs"], NOT_WRITABLE,
         place="ro"),
    Case("quickstart-steps-0", lambda w: ["quickstart", "--output_dir", w.t / "qs", "--max_train_steps", "0"],
         "--max_train_steps"),
    Case("quickstart-seed-negative", lambda w: ["quickstart", "--output_dir", w.t / "qs", "--seed", "-1"], "--seed"),
]

RESIZE_IMAGES = [
    Case("resize-images-src-missing", lambda w: ["resize-images", w.i / "missing", w.t / "small"], "missing"),
    Case("resize-images-dst-is-a-file", resize_images(dst=lambda w: w.t / "afile"), "afile", setup=existing("afile")),
    Case("resize-images-resolution-0", resize_images("--max_resolution", "0x0"), "--max_resolution"),
    Case("resize-images-resolution-words", resize_images("--max_resolution", "big"), "--max_resolution"),
    Case("resize-images-divisible-0", resize_images("--divisible_by", "0"), "--divisible_by"),
    Case("resize-images-divisible-negative", resize_images("--divisible_by", "-3"), "--divisible_by"),
    Case("resize-images-existing-output", resize_images(), "--overwrite", setup=existing("small/red+32x32.jpg")),
    Case("resize-images-read-only-folder", resize_images(dst=lambda w: w.ro / "small"), NOT_WRITABLE, place="ro"),
    Case("resize-images-full-disk",
         resize_images("--max_resolution", "128x128", "--save_as_png", dst=lambda w: w.full / "small"), FULL,
         place="full"),
]

TOP_LEVEL = [
    Case("unknown-command", lambda w: ["banana"], "banana"),
    Case("unknown-option", lambda w: ["merge", "--banana", "1"], "--banana"),
    Case("networks-extra-argument", lambda w: ["networks", "extra"], "extra"),
    Case("networks-unknown-option", lambda w: ["networks", "--all"], "--all"),
]

CASES = [*MERGE, *SVD_MERGE, *RESIZE, *EXTRACT, *INSPECT, *CHECK, *CONVERT, *GENERATE, *TRAIN, *QUICKSTART,
         *RESIZE_IMAGES, *TOP_LEVEL]
