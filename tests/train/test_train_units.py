"""The pure functions under ``adapt train``, on plain tensors and strings."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from adapt_cli.commands.train import rewrite_argv
from adapters_core.errors import ConfigError
from adapters_core.generate.prompt_syntax import parse_prompt_line
from adapters_core.models import clip_text as text
from adapters_core.train import loss as L
from adapters_core.train import noise as N
from adapters_core.train.components import resolve_network_type
from adapters_core.train.config_file import coerce, flatten, load_config_file, parse_int_or_float
from adapters_core.train.optimizers import Lion, build_optimizer, parse_optimizer_args
from adapters_core.train.progress import LossRecorder, seed_step
from adapters_core.train.sampling import SAMPLE_FLAGS, image_name, is_sample_time, load_prompts, sample_prompt
from adapters_core.train.schedulers import ScheduleSpec, build_lr_scheduler, steps_of


# -- noise ------------------------------------------------------------------------------
def test_scheduler_is_kohyas_and_forward_process_matches_diffusers() -> None:
    scheduler = N.make_noise_scheduler()
    reference = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False
    )
    torch.testing.assert_close(scheduler.alphas_cumprod, reference.alphas_cumprod)
    x, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(N.add_noise(scheduler.alphas_cumprod, x, eps, t), reference.add_noise(x, eps, t))
    torch.testing.assert_close(N.velocity(scheduler.alphas_cumprod, x, eps, t), reference.get_velocity(x, eps, t))


def test_zero_terminal_snr_and_snr() -> None:
    scheduler = N.make_noise_scheduler(zero_terminal_snr=True)
    plain = N.make_noise_scheduler()
    assert scheduler.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert scheduler.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-6)
    snr = N.snr(plain.alphas_cumprod, torch.tensor([10, 999]))
    assert snr[0] > snr[1] > 0


def test_timesteps_noise_offset_and_pyramid_noise() -> None:
    torch.manual_seed(0)
    t = N.sample_timesteps(1000, 100, 200, torch.device("cpu"))
    assert t.min() >= 100 and t.max() < 200 and t.dtype == torch.long
    assert (N.sample_timesteps(3, 5, 5, torch.device("cpu")) == 5).all()
    latents, noise = torch.zeros(2, 4, 16, 16), torch.zeros(2, 4, 16, 16)
    shifted = N.offset_noise(noise, latents, 0.1)
    assert torch.allclose(shifted, shifted[:, :, :1, :1].expand_as(shifted))  # one offset per sample/channel
    assert shifted.abs().max() > 0
    pyramid = N.pyramid_noise(torch.randn(2, 4, 32, 32), 6, 0.3)
    assert pyramid.std().item() == pytest.approx(1.0, rel=1e-5)


# -- loss -------------------------------------------------------------------------------
def test_loss_types_and_weights() -> None:
    pred, target = torch.tensor([[0.0, 3.0]]), torch.tensor([[0.0, 0.0]])
    assert L.elementwise_loss(pred, target, "l2").tolist() == [[0.0, 9.0]]
    assert L.elementwise_loss(pred, target, "l1").tolist() == [[0.0, 3.0]]
    c = torch.tensor([1.0])
    huber = L.elementwise_loss(pred, target, "huber", c)
    assert huber[0, 1].item() == pytest.approx(2 * (math.sqrt(10) - 1))
    assert L.elementwise_loss(pred, target, "smooth_l1", torch.tensor([2.0]))[0, 1].item() == pytest.approx(
        2 * (math.sqrt(13) - 2)
    )
    snr = torch.tensor([1.0, 10.0])
    assert L.min_snr_weight(snr, 5.0, False).tolist() == pytest.approx([1.0, 0.5])
    assert L.min_snr_weight(snr, 5.0, True).tolist() == pytest.approx([0.5, 5 / 11])
    assert L.debiased_weight(snr, False).tolist() == pytest.approx([1.0, 1 / math.sqrt(10)])
    weighted = L.snr_weighted(torch.ones(2), snr, v_prediction=False, min_snr_gamma=5.0)
    assert weighted.tolist() == pytest.approx([1.0, 0.5])
    assert L.huber_c("constant", 0.1, 2.0, torch.tensor([3]), torch.ones(10), 10).tolist() == pytest.approx([0.2])
    ac = N.make_noise_scheduler().alphas_cumprod
    assert L.huber_c("exponential", 0.1, 1.0, torch.tensor([0, 1000 - 1]), ac, 1000)[0].item() == pytest.approx(1.0)
    assert L.huber_c("snr", 0.1, 1.0, torch.tensor([999]), ac, 1000)[0].item() == pytest.approx(0.1, abs=0.01)
    masked = L.apply_mask(torch.ones(1, 4, 2, 2), torch.tensor([[[1.0, 1.0, 0.0, 0.0]] * 4]))
    assert masked[0, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]


# -- text -------------------------------------------------------------------------------
def test_long_captions_are_chunked_and_joined() -> None:
    from adapters_core.models import build_tiny_model

    model = build_tiny_model()
    captions = ["sks shape, " + "red circle, " * 40, "short"]
    ids = text.tokenize(model.tokenizer, captions, 150)
    assert ids.shape == (2, 2, 77)
    assert (ids[:, :, 0] == model.tokenizer.bos_token_id).all()
    states = text.encode(model.text_encoder, ids)
    assert states.shape == (2, 152, 32)
    plain = text.encode(model.text_encoder, text.tokenize(model.tokenizer, ["short"]))
    skip1 = text.encode(model.text_encoder, text.tokenize(model.tokenizer, ["short"]), clip_skip=1)
    torch.testing.assert_close(plain, skip1)
    skip2 = text.encode(model.text_encoder, text.tokenize(model.tokenizer, ["short"]), clip_skip=2)
    assert skip2.shape == plain.shape and not torch.allclose(skip2, plain)
    with pytest.raises(ConfigError):
        text.tokenize(model.tokenizer, ["x"], 100)


# -- optimizers and schedules ---------------------------------------------------------------
def test_lion_step_and_optimizer_choices() -> None:
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    param.grad = torch.tensor([0.5, -0.1])
    opt = Lion([param], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    opt.step()
    expected = torch.tensor([1.0, -2.0]) * (1 - 0.1 * 0.5) - 0.1 * torch.tensor([1.0, -1.0])
    torch.testing.assert_close(param.data, expected)
    torch.testing.assert_close(opt.state[param]["exp_avg"], 0.01 * torch.tensor([0.5, -0.1]))
    assert parse_optimizer_args(["betas=(0.9, 0.99)", "weight_decay=1e-2", "foreach=False"]) == {
        "betas": (0.9, 0.99),
        "weight_decay": 0.01,
        "foreach": False,
    }
    with pytest.raises(ConfigError, match="Python literal"):
        parse_optimizer_args(["decay=fast"])
    sgd = build_optimizer("SGDNesterov", [{"params": [param], "lr": 0.1}], 0.1, {})
    assert sgd.optimizer.defaults["momentum"] == 0.9 and sgd.optimizer.defaults["nesterov"]
    ada = build_optimizer("Adafactor", [{"params": [param], "lr": 0.1}], 0.1, {})
    assert ada.forced_scheduler == "adafactor:0.1"
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ConfigError, match="AdamW8bit: install bitsandbytes: pip install bitsandbytes"):
            build_optimizer("AdamW8bit", [{"params": [param]}], 0.1, {})
    with pytest.raises(ConfigError, match="unknown"):
        build_optimizer("Sophia", [{"params": [param]}], 0.1, {})


def test_lr_schedules_and_warmup_ratio() -> None:
    def lrs(spec: ScheduleSpec, steps: int) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = build_lr_scheduler(opt, spec)
        values = []
        for _ in range(steps):
            values.append(scheduler.get_last_lr()[0])
            opt.step()
            scheduler.step()
        return values

    assert steps_of(0.25, 8) == 2 and steps_of(3, 8) == 3
    warm = lrs(ScheduleSpec("constant_with_warmup", total_steps=8, warmup_steps=0.25), 4)
    assert warm == pytest.approx([0.0, 0.5, 1.0, 1.0])
    linear = lrs(ScheduleSpec("linear", total_steps=4), 4)
    assert linear == pytest.approx([1.0, 0.75, 0.5, 0.25])
    restarts = lrs(ScheduleSpec("cosine_with_restarts", total_steps=4, num_cycles=2), 4)
    assert restarts[0] == pytest.approx(1.0) and restarts[2] == pytest.approx(1.0)
    assert lrs(ScheduleSpec("polynomial", total_steps=4, power=2.0), 2)[1] < 0.75
    assert lrs(
        ScheduleSpec("", total_steps=4, scheduler_type="StepLR", scheduler_args={"step_size": 1, "gamma": 0.5}), 3
    ) == [1.0, 0.5, 0.25]
    assert len(lrs(ScheduleSpec("inverse_sqrt", total_steps=4, warmup_steps=1), 3)) == 3
    with pytest.raises(ConfigError, match="constant_with_warmup"):
        lrs(ScheduleSpec("constant", total_steps=4, warmup_steps=2), 1)
    with pytest.raises(ConfigError, match="unknown"):
        lrs(ScheduleSpec("sawtooth", total_steps=4), 1)


# -- arguments ------------------------------------------------------------------------------
def test_config_file_values_are_checked(tmp_path: Path) -> None:
    assert flatten({"a": 1, "t": {"b": 2}}, "f") == {"a": 1, "b": 2}
    with pytest.raises(ConfigError, match="given twice"):
        flatten({"a": 1, "t": {"a": 2}}, "f")
    assert coerce("network_alpha", 4, "f") == 4.0
    assert coerce("text_encoder_lr", 5e-5, "f") == (5e-5,)
    assert coerce("resolution", [512, 768], "f") == "512,768"
    assert coerce("lr_warmup_steps", "0.1", "f") == 0.1 and parse_int_or_float("100", "x") == 100
    with pytest.raises(ConfigError, match="'max_train_steps' must be an integer"):
        coerce("max_train_steps", "10", "f")
    with pytest.raises(ConfigError, match="expected one of no, fp16, bf16"):
        coerce("mixed_precision", "fp8", "f")
    path = tmp_path / "c.toml"
    path.write_text("fp8_base = true\n")
    with pytest.raises(ConfigError, match="fp8 base weights are not supported"):
        load_config_file(str(path))
    path.write_text("fp8_base = false\nhighvram = true\nseed = 4\nfull_bf16 = true\n")
    assert load_config_file(str(path)) == {"seed": 4, "full_bf16": True}


def test_rewrite_argv_expands_kohya_multi_value_flags() -> None:
    assert rewrite_argv(["--network_args", "a=1", "b=2", "--seed", "1", "--base-weights-multiplier", "-0.5", "1"]) == [
        "--network_args",
        "a=1",
        "--network_args",
        "b=2",
        "--seed",
        "1",
        "--base-weights-multiplier",
        "-0.5",
        "--base-weights-multiplier",
        "1",
    ]
    assert rewrite_argv(["--optimizer_args=weight_decay=0.1", "--network_args"]) == [
        "--optimizer_args",
        "weight_decay=0.1",
    ]
    with pytest.raises(ConfigError, match="--fp8_base is a kohya option"):
        rewrite_argv(["--fp8-base"])


def test_network_module_names() -> None:
    assert resolve_network_type(None, "networks.lora").name == "lora"
    assert resolve_network_type(None, "networks.dylora").name == "dylora"
    assert resolve_network_type("c3lier", "networks.lora").name == "c3lier"
    assert resolve_network_type(None, None).name == "lora"
    with pytest.raises(ConfigError, match="different types"):
        resolve_network_type("dylora", "networks.lora")


# -- sampling and progress ----------------------------------------------------------------------
def test_prompt_lines_and_files(tmp_path: Path) -> None:
    line = "a cat, best --n blurry, low --w 100 --h 640 --s 2000 --l 5.5 --d 7 --ss k_euler --x 1"
    prompt = sample_prompt(parse_prompt_line(line, "prompt", SAMPLE_FLAGS), 3)
    assert (prompt.prompt, prompt.negative_prompt, prompt.width, prompt.height) == (
        "a cat, best",
        "blurry, low",
        96,
        640,
    )
    assert (prompt.steps, prompt.scale, prompt.seed, prompt.sampler, prompt.index) == (1000, 5.5, 7, "euler", 3)
    toml = tmp_path / "p.toml"
    toml.write_text(
        "[prompt]\nwidth = 64\nheight = 64\n[[prompt.subset]]\nprompt = 'one'\n"
        "[[prompt.subset]]\nprompt = 'two'\nsample_steps = 3\n"
    )
    loaded = load_prompts(toml)
    assert [(p.prompt, p.width, p.steps) for p in loaded] == [("one", 64, 30), ("two", 64, 3)]
    json_file = tmp_path / "p.json"
    json_file.write_text('["x --w 64", {"prompt": "y", "seed": 2}]')
    assert [(p.prompt, p.width, p.seed) for p in load_prompts(json_file)] == [("x", 64, None), ("y", 512, 2)]
    with pytest.raises(ConfigError, match="not supported"):
        sample_prompt(parse_prompt_line("x --ss dpm_2_a", "prompt", SAMPLE_FLAGS))
    assert is_sample_time(0, None, every_n_steps=None, every_n_epochs=None, at_first=True)
    assert is_sample_time(4, None, every_n_steps=2, every_n_epochs=None, at_first=False)
    assert not is_sample_time(4, 2, every_n_steps=2, every_n_epochs=None, at_first=False)
    assert is_sample_time(9, 2, every_n_steps=2, every_n_epochs=1, at_first=False)
    assert not is_sample_time(4, None, every_n_steps=2, every_n_epochs=1, at_first=False)
    name = image_name("run", 12, None, prompt)
    assert name.startswith("run_000012_03_") and name.endswith("_7.png")
    assert image_name(None, 12, 2, prompt).startswith("e000002_03_")


def test_loss_recorder_and_step_seeds() -> None:
    recorder = LossRecorder()
    for step, value in enumerate([1.0, 2.0, 3.0]):
        recorder.add(epoch=0, step=step, loss=value)
    assert recorder.average == pytest.approx(2.0)
    recorder.add(epoch=1, step=0, loss=4.0)
    assert recorder.average == pytest.approx(3.0)
    seed_step(1, 5, 0, 0)
    a = torch.rand(3)
    seed_step(1, 5, 0, 0)
    assert torch.equal(a, torch.rand(3))
    seed_step(1, 6, 0, 0)
    assert not torch.equal(a, torch.rand(3))
