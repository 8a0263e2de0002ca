"""kohya's prompt syntax, read by one parser for `adapt generate` and for training samples.

Each caller keeps its own default for what a line leaves out: `adapt generate --steps` is 50,
a training sample image takes kohya's 30 steps.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from adapt_cli.commands.generate import generate
from adapters_core.errors import ConfigError
from adapters_core.generate.prompts import PromptJob, parse_prompt_line, read_prompts_file
from adapters_core.train.sampling import load_prompts

LINE = "a cat --n blurry --W 640 --h 768 --s 12 --l 4.5 --d 7"


def test_both_callers_read_a_line_alike(tmp_path):
    (tmp_path / "p.txt").write_text(LINE + "\n", encoding="utf-8")
    job = read_prompts_file(tmp_path / "p.txt", PromptJob(""))
    [sample] = load_prompts(tmp_path / "p.txt")
    assert (job[0].prompt, job[0].negative_prompt, job[0].width, job[0].height, job[0].steps, job[0].scale) == (
        "a cat", "blurry", 640, 768, 12, 4.5
    )
    assert (sample.prompt, sample.negative_prompt, sample.width, sample.height, sample.steps, sample.scale) == (
        "a cat", "blurry", 640, 768, 12, 4.5
    )
    assert job[0].seeds == (7,) and sample.seed == 7


def test_each_caller_keeps_its_default_steps(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n", encoding="utf-8")
    steps_option = next(p for p in generate.params if p.name == "steps")
    assert steps_option.default == 50
    assert read_prompts_file(tmp_path / "p.txt", PromptJob("", steps=steps_option.default))[0].steps == 50
    assert parse_prompt_line("a cat", PromptJob("")).steps == 50
    assert [p.steps for p in load_prompts(tmp_path / "p.txt")] == [30]
    (tmp_path / "p.toml").write_text("[[prompt.subset]]\nprompt = 'a cat'\n", encoding="utf-8")
    assert [p.steps for p in load_prompts(tmp_path / "p.toml")] == [30]


def test_options_a_caller_lacks_are_ignored_with_a_warning(tmp_path, caplog):
    (tmp_path / "p.txt").write_text("a cat --am 0.5 --s 4\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        [sample] = load_prompts(tmp_path / "p.txt")
        job = parse_prompt_line("a cat --ss euler --s 4", PromptJob(""), "g:1")
    assert sample.steps == 4 and job.steps == 4
    assert f"{tmp_path / 'p.txt'}:1: option --am is not supported" in caplog.text
    assert "g:1: option --ss is not supported" in caplog.text


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.txt", "ok\na cat --s many\n", r"p.txt:2: --s 'many': expected an integer"),
        ("p.txt", "a cat --d 1,2\n", r"p.txt:1: --d 1,2: a sample image takes one seed"),
        ("p.txt", "a cat --w\n", r"p.txt:1: ' --w' is not of the form"),
        ("p.json", '[{"seed": 1}]', r"p.json: entry 1: expected a 'prompt' string"),
        ("p.json", '{"prompt": "x"}', r"p.json: expected a JSON list of prompts"),
        ("p.json", '[{"prompt": "x", "width": "wide"}]', r"p.json: entry 1 \(width\): --w 'wide': expected an integer"),
        ("p.toml", "[[prompt.subset]]\nprompt = 'x'\nsample_steps = 'many'\n", r"entry 1 \(sample_steps\): --s 'many'"),
    ],
)
def test_bad_sample_prompts_name_the_file_the_entry_and_the_option(tmp_path, name, text, message):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_prompts(tmp_path / name)


def test_generation_does_not_import_training():
    code = "import sys, adapters_core.generate.prompts; assert not any(m.startswith('adapters_core.train') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
