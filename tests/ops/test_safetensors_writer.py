"""SafetensorsWriter: each tensor at its own offset in any order, copies from another file,
the writer-thread check, and a bounded queue."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapters_core.ops.streaming import SafetensorsWriter, TensorSpec, open_checkpoint


def sample() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(64, 32, generator=g),
        "b": torch.randn(5, generator=g).half(),
        "c": torch.arange(7, dtype=torch.int64),
        "d": torch.randn(3, 3, 3, generator=g).bfloat16(),
        "e": torch.empty(0, 4),
    }


def specs_of(tensors: dict[str, torch.Tensor]) -> list[TensorSpec]:
    return [(key, tensor.dtype, tensor.shape) for key, tensor in tensors.items()]


def written(path: Path, tensors: dict[str, torch.Tensor], order: list[str], **options: object) -> bytes:
    with SafetensorsWriter(path, specs_of(tensors), {"k": "v"}, **options) as writer:  # type: ignore[arg-type]
        for key in order:
            writer.write(key, tensors[key])
    return path.read_bytes()


def test_any_order_gives_the_same_bytes_as_the_header_order(tmp_path: Path) -> None:
    tensors = sample()
    in_order = written(tmp_path / "a.safetensors", tensors, list(tensors))
    reversed_order = written(tmp_path / "b.safetensors", tensors, list(reversed(tensors)), queue_bytes=1)
    assert in_order == reversed_order
    loaded = load_file(str(tmp_path / "b.safetensors"))
    assert list(loaded) == sorted(tensors) and all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_copies_of_another_file_land_between_written_tensors(tmp_path: Path) -> None:
    tensors = sample()
    save_file(tensors, str(tmp_path / "source.safetensors"))
    reader = open_checkpoint(tmp_path / "source.safetensors")
    try:
        with SafetensorsWriter(tmp_path / "out.safetensors", specs_of(tensors), {"k": "v"}) as writer:
            assert writer.copy("c", reader) and writer.copy("a", reader)
            for key in ["e", "b", "d"]:
                writer.write(key, tensors[key])
    finally:
        reader.close()
    assert (tmp_path / "out.safetensors").read_bytes() == written(tmp_path / "ref.safetensors", tensors, list(tensors))


def test_a_key_twice_a_key_missing_or_a_wrong_shape_is_refused(tmp_path: Path) -> None:
    tensors = sample()
    with pytest.raises(ValueError, match="written twice"):
        with SafetensorsWriter(tmp_path / "x.safetensors", specs_of(tensors)) as writer:
            writer.write("a", tensors["a"])
            writer.write("a", tensors["a"])
    with pytest.raises(ValueError, match="only 4 of 5 tensors"):
        written(tmp_path / "y.safetensors", tensors, ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="expected torch.float32"):
        with SafetensorsWriter(tmp_path / "z.safetensors", specs_of(tensors)) as writer:
            writer.write("a", tensors["a"].half())


def test_an_error_of_the_check_on_the_writer_thread_reaches_the_caller(tmp_path: Path) -> None:
    tensors = sample()
    seen: list[str] = []

    def refuse_b(tensor: torch.Tensor) -> None:
        if tensor.dtype == torch.float16:
            raise RuntimeError("b is not wanted")

    with pytest.raises(RuntimeError, match="b is not wanted"):
        with SafetensorsWriter(tmp_path / "x.safetensors", specs_of(tensors), after_write=seen.append) as writer:
            for key, tensor in tensors.items():
                writer.write(key, tensor, check=refuse_b)
    assert "b" not in seen and "a" in seen  # b's bytes were not written


def test_tensors_still_queued_when_the_caller_fails_are_not_written(tmp_path: Path) -> None:
    import threading

    tensors = sample()
    seen: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def hold(tensor: torch.Tensor) -> None:
        entered.set()
        release.wait(10)

    with pytest.raises(KeyboardInterrupt):
        with SafetensorsWriter(tmp_path / "x.safetensors", specs_of(tensors), after_write=seen.append) as writer:
            writer.write("a", tensors["a"], check=hold)  # the writer's thread waits in the check
            for key in ["b", "c", "d", "e"]:
                writer.write(key, tensors[key])
            assert entered.wait(10)
            threading.Timer(0.2, release.set).start()  # let it go once the caller has failed
            raise KeyboardInterrupt
    assert seen == ["a"]
