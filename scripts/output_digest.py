"""One digest per output file under a folder, for bit-identical checks across commits.

Tensors are hashed by name, dtype and bytes; metadata, PNG text chunks and text lines whose
key names a time or session (``ss_training_started_at``, ``modelspec.date``, ``ss_session_id``)
are left out, since they differ on every run. Folders named ``model`` and ``data`` (inputs) are
skipped; sample-image time stamps in names are replaced by ``TS``.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open

VARYING = re.compile(r"(_at$|date|time|session_id)")


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as handle:
            meta = {k: v for k, v in (handle.metadata() or {}).items() if not VARYING.search(k)}
            h.update(json.dumps(meta, sort_keys=True).encode())
            for key in sorted(handle.keys()):
                tensor = handle.get_tensor(key)
                h.update(key.encode() + str(tensor.dtype).encode() + _tensor_bytes(tensor))
    elif path.suffix in (".ckpt", ".pt"):
        state = torch.load(path, weights_only=True)
        state = state.get("state_dict", state)
        for key in sorted(state):
            value = state[key]
            h.update(key.encode() + (_tensor_bytes(value) if isinstance(value, torch.Tensor) else repr(value).encode()))
    elif path.suffix == ".png":
        with Image.open(path) as image:
            h.update(image.tobytes())
            info = {k: str(v) for k, v in image.info.items() if not VARYING.search(k)}
            h.update(json.dumps(info, sort_keys=True).encode())
    else:
        lines = path.read_bytes().splitlines()
        h.update(b"\n".join(line for line in lines if not VARYING.search(line.decode(errors="replace").split("=")[0].strip())))
    return h.hexdigest()[:16]


def main(root: Path) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if relative.parts[0] in ("model", "data"):
            continue
        print(digest(path), re.sub(r"_\d{14}", "_TS", str(relative)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
