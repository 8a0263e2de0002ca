"""Give mypy the installed package names: link .venv/packages/<package> to the folder it installs from.

pyproject.toml installs some packages from folders of another name (adapt_cli from cli/, adapt_lora
from plugins/lora/, ...). The editable install maps them with an import hook, which mypy does not
follow; this link tree (mypy_path and files in [tool.mypy]) gives mypy the same names.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
LINKS = ROOT / ".venv" / "packages"


def main() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    LINKS.mkdir(parents=True, exist_ok=True)
    wanted = {name: folder for name, folder in setuptools["package-dir"].items() if name != folder}
    for link in LINKS.iterdir():
        if link.name not in wanted:
            link.unlink()
    for name, folder in wanted.items():
        link = LINKS / name
        target = os.path.relpath(ROOT / folder, LINKS)
        if not link.is_symlink() or os.readlink(link) != target:
            link.unlink(missing_ok=True)
            link.symlink_to(target, target_is_directory=True)


if __name__ == "__main__":
    main()
