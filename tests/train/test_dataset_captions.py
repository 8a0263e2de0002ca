"""Caption files, fine-tuning metadata and kohya's caption processing order."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from adapters_core.errors import DatasetError
from adapters_core.train.dataset import (
    SubsetConfig,
    count_tags,
    load_finetune_metadata,
    process_caption,
    read_caption_file,
)

BASE = SubsetConfig(image_dir="x")


def test_plain_caption_is_passed_through() -> None:
    assert process_caption("a,b ,  c", BASE, random.Random(0)) == "a,b ,  c"
    assert process_caption("first\nsecond", BASE, random.Random(0)) == "first"


def test_prefix_suffix_keep_tokens_then_shuffle() -> None:
    s = replace(BASE, caption_prefix="pre", caption_suffix="suf", keep_tokens=1, shuffle_caption=True)
    flex = ["b", "c", "d", "e suf"]
    random.Random(3).shuffle(flex)  # the only draw: no dropout draws when the rates are 0
    assert process_caption("a, b, c, d, e", s, random.Random(3)) == ", ".join(["pre a"] + flex)


def test_keep_tokens_separator_fixes_head_and_tail() -> None:
    s = replace(BASE, keep_tokens_separator="|||", shuffle_caption=True)
    for seed in range(5):
        out = process_caption("x, y ||| a, b, c ||| z", s, random.Random(seed)).split(", ")
        assert out[:2] == ["x", "y"] and out[-1] == "z" and sorted(out[2:5]) == ["a", "b", "c"]
    # Without shuffling the separator is still removed rather than sent to the text encoder.
    no_shuffle = replace(BASE, keep_tokens_separator="|||")
    assert process_caption("x ||| a, b", no_shuffle, random.Random(0)) == "x, a, b"


def test_dropout_comes_before_everything_else() -> None:
    assert process_caption("a, b", replace(BASE, caption_dropout_rate=1.0, caption_prefix="p"), random.Random(0)) == ""
    every2 = replace(BASE, caption_dropout_every_n_epochs=2)
    assert process_caption("a, b", every2, random.Random(0), epoch=2) == ""
    assert process_caption("a, b", every2, random.Random(0), epoch=3) == "a, b"


def test_tag_dropout_spares_kept_tokens() -> None:
    s = replace(BASE, keep_tokens=1, caption_tag_dropout_rate=1.0)
    assert process_caption("sks dog, red, collar", s, random.Random(0)) == "sks dog"


def test_token_warmup() -> None:
    s = replace(BASE, keep_tokens=1, token_warmup_min=1, token_warmup_step=10)
    caption = "k, a, b, c, d"
    assert process_caption(caption, s, random.Random(0), step=0) == "k, a"
    # 4 shufflable tokens: floor(5 * (4 - 1) / 10) + 1 = 2 of them at step 5.
    assert process_caption(caption, s, random.Random(0), step=5) == "k, a, b"
    assert process_caption(caption, s, random.Random(0), step=10) == caption
    fraction = replace(s, token_warmup_step=0.5)
    assert process_caption(caption, fraction, random.Random(0), step=0, max_train_steps=20) == "k, a"


def test_wildcards() -> None:
    s = replace(BASE, enable_wildcard=True)
    seen = {process_caption("{red|blue} cat, {{literal}}", s, random.Random(i)) for i in range(30)}
    assert seen == {"red cat, {literal}", "blue cat, {literal}"}
    lines = {process_caption("one\ntwo", s, random.Random(i)) for i in range(30)}
    assert lines == {"one", "two"}


def test_secondary_separator_is_replaced_last() -> None:
    s = replace(BASE, secondary_separator=";;;", shuffle_caption=True)
    out = process_caption("a;;;b, c", s, random.Random(0))
    assert sorted(out.split(", ")) == ["a,b", "c"]


def test_read_caption_file(tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    assert read_caption_file(image, ".txt", False) is None
    (tmp_path / "cat.txt").write_text("\ufefffirst line\nsecond\n", encoding="utf-8")
    assert read_caption_file(image, ".txt", False) == "first line"
    assert read_caption_file(image, ".txt", True) == "first line\nsecond"
    assert read_caption_file(tmp_path / "cat_10_20_30_40.png", ".txt", False) == "first line"
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(DatasetError, match="empty.txt: caption file is empty"):
        read_caption_file(tmp_path / "empty.png", ".txt", False)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_caption_file(tmp_path / "bad.png", ".txt", False)


def test_finetune_metadata_json_and_jsonl(tmp_path: Path) -> None:
    for name in ("a.png", "b.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"a.png": {"caption": "a cat", "tags": "cute, fluffy"}, "b": {"tags": "dog"}}))
    entries = load_finetune_metadata(meta, tmp_path, ", ", False)
    assert [(e.path.name, e.caption, e.tags) for e in entries] == [
        ("a.png", "a cat, cute, fluffy", "cute, fluffy"), ("b.jpg", "dog", "dog")]
    jsonl = tmp_path / "meta.jsonl"
    jsonl.write_text(json.dumps({"image_path": str(tmp_path / "a.png"), "caption": "x"}) + "\n")
    (entry,) = load_finetune_metadata(jsonl, None, ",", False)
    assert entry.path == (tmp_path / "a.png").resolve() and entry.caption == "x"
    meta.write_text(json.dumps({"missing.png": {"caption": "x"}}))
    with pytest.raises(DatasetError, match="'missing.png' not found"):
        load_finetune_metadata(meta, tmp_path, ",", False)
    jsonl.write_text('{"caption": "no path"}\n')
    with pytest.raises(DatasetError, match="line 1 needs an \"image_path\""):
        load_finetune_metadata(jsonl, None, ",", False)


def test_count_tags() -> None:
    assert count_tags(["Sks dog, red", "sks dog,, blue ", ""]) == {"sks dog": 2, "red": 1, "blue": 1}
