"""``adapt grid`` on the tiny model: cells are the generate path's images, labels, PNG text, errors."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import randomize
from PIL import Image, PngImagePlugin

from adapt_cli.main import main
from adapters_core.generate.grid import GRID_KEY, make_grid, parse_axis
from adapters_core.generate.grid_image import GridLayout, display_scale
from adapters_core.generate.png import PARAMETERS_KEY
from adapters_core.models import build_tiny_model, write_tiny_model
from adapters_core.network import Network

SMALL = ["--W", "32", "--H", "32", "--steps", "2", "--seed", "5"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    write_tiny_model(root / "model")
    model = build_tiny_model()
    for epoch, network in ((1, "lora"), (2, "c3lier"), (10, "lora")):  # natural order: 1, 2, 10
        net = Network.create(network, unet=model.unet, text_encoder=model.text_encoder, options={"network_dim": 4})
        randomize(net, seed=epoch, std=0.3).save(root / f"run-{epoch:d}.safetensors")
    return SimpleNamespace(root=root, model=root / "model")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def png_text(path: Path) -> dict[str, str]:
    """A PNG's text chunks."""
    image = Image.open(path)
    assert isinstance(image, PngImagePlugin.PngImageFile)
    return image.text


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_grid_of_epochs_by_multiplier_holds_the_single_images(assets, tmp_path, capsys) -> None:
    outdir = tmp_path / "out"
    code, out, err = run(capsys, "grid", "--model", assets.model, "--prompt", "a cat", "--x",
                         f"adapter={assets.root}/run-*.safetensors", "--y", "mul=0,1", "--title", "epochs",
                         "--outdir", outdir, *SMALL)
    assert code == 0, err
    grid_file = outdir / "grid-00000.png"
    assert f"{grid_file}: grid of 6 images" in out
    singles = sorted(outdir.glob("0*.png"))
    assert len(singles) == 6
    grid = Image.open(grid_file)
    chunk = json.loads(png_text(grid_file)[GRID_KEY])
    assert chunk["axes"][0]["values"] == ["run-1", "run-2", "run-10"]
    assert chunk["axes"][1] == {"kind": "mul", "values": [0.0, 1.0]}
    assert "Steps: 2" in png_text(grid_file)[PARAMETERS_KEY]
    layout = GridLayout("epochs", ["run-1", "run-2", "run-10"], ["mul: 0", "mul: 1"], [""], 32 * display_scale(32, 32),
                        32 * display_scale(32, 32))
    assert grid.size == (layout.width, layout.height)
    cells = {}
    for single in singles:
        info = png_text(single)[PARAMETERS_KEY]
        name, multiplier_text = info.split("<lora:")[1].split(">")[0].rsplit(":", 1)
        cells[(name, float(multiplier_text))] = pixels(Image.open(single))
        assert "Seed: 5" in info and "Lora hashes" in info
    for column, name in enumerate(["run-1", "run-2", "run-10"]):
        for row, multiplier in enumerate([0.0, 1.0]):
            x, y = layout.cell_origin(column, row)
            cell = grid.crop((x, y, x + layout.cell_width, y + layout.cell_height))
            cell = cell.resize((32, 32), Image.Resampling.NEAREST)
            assert np.array_equal(pixels(cell), cells[(name, multiplier)])
    # multiplier 0 is the base model whatever the adapter; multiplier 1 differs per adapter
    assert np.array_equal(cells[("run-1", 0.0)], cells[("run-10", 0.0)])
    assert not np.array_equal(cells[("run-1", 1.0)], cells[("run-10", 1.0)])


def test_grid_cells_equal_adapt_generate(assets, tmp_path, capsys) -> None:
    """Stacked adapters, block weights and a prompt x seed grid give what `adapt generate` gives."""
    common = ["--model", assets.model, "--network_weights", assets.root / "run-1.safetensors",
              assets.root / "run-2.safetensors", "--network_mul", "0.7", "0.4", "--block_weights", "OUTS", "ALL",
              "--W", "32", "--H", "32", "--steps", "2"]
    code, _, err = run(capsys, "grid", *common, "--x", "seed=3,4", "--y", "prompt=a cat|a dog --n blurry",
                       "--outdir", tmp_path / "grid")
    assert code == 0, err
    code, _, err = run(capsys, "generate", *common, "--prompt", "a dog --n blurry", "--seed", "4",
                       "--outdir", tmp_path / "gen")
    assert code == 0, err
    generated_file = next((tmp_path / "gen").glob("*.png"))
    generated = Image.open(generated_file)
    matching = [p for p in (tmp_path / "grid").glob("0*.png") if png_text(p)[PARAMETERS_KEY] ==
                png_text(generated_file)[PARAMETERS_KEY]]
    assert len(matching) == 1
    assert np.array_equal(pixels(Image.open(matching[0])), pixels(generated))


def test_grid_streams_one_pipeline_and_loads_each_adapter_once(assets, tmp_path, monkeypatch) -> None:
    import adapters_core.generate.grid as grid_module

    loads: list[str] = []
    real = grid_module.load_networks

    def counting(pipe, paths, *args, **kwargs):
        loads.extend(str(p) for p in paths)
        return real(pipe, paths, *args, **kwargs)

    monkeypatch.setattr(grid_module, "load_networks", counting)
    from adapters_core.generate.grid import GridRequest
    from adapters_core.generate.images import GenerationSettings
    from adapters_core.generate.prompts import PromptJob
    from adapters_core.models import load_sd_model

    axes = [parse_axis("mul=0.5,1", "--x"), parse_axis(f"adapter={assets.root}/run-1*.safetensors", "--y"),
            parse_axis("cfg=1,4", "--z")]
    request = GridRequest(axes, PromptJob("a cat", width=32, height=32, steps=1), GenerationSettings(seed=1))
    result = make_grid(load_sd_model(assets.model), assets.model, request, tmp_path)
    assert len(result.images) == 8
    assert loads == [str(assets.root / "run-1.safetensors"), str(assets.root / "run-10.safetensors")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--x", "colour=red"], "--x 'colour=red': expected KIND=VALUES with KIND one of adapter, mul"),
        (["--x", "mul=0,1"], "a 'mul' or 'blocks' axis needs adapters"),
        (["--x", "seed=1,a"], "the values of 'seed' must be integers"),
        (["--x", "seed=1", "--y", "seed=2"], "axis kind 'seed' is used twice"),
        (["--x", "adapter=nothing-*.safetensors"], "'nothing-*.safetensors' matches no file"),
        (["--network_weights", "{lora}", "--x", "blocks=OUTS|1,2"], "'1,2': got 2 values; expected 25"),
    ],
)
def test_bad_axes_are_one_line_and_exit_2(assets, tmp_path, capsys, args, message) -> None:
    args = [str(assets.root / "run-1.safetensors") if a == "{lora}" else a for a in args]
    code, _, err = run(capsys, "grid", "--model", assets.model, *args, "--outdir", tmp_path, *SMALL)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("adapt: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert not list(tmp_path.glob("*.png"))
