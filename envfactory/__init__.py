"""envfactory: the installed name of this project's packages.

The repository keeps its parts as top-level folders (`factory/`, `sandboxes/`, `toolgen/`,
`verifiers/`, `model/`, `kernels/`); installed, they are `envfactory.factory`,
`envfactory.verifiers`, ... so that none of them lands on a name another distribution owns
(`verifiers` is PrimeIntellect's library, `kernels` is Hugging Face's kernel hub, and
`model` and `factory` are anyone's). A normal install copies them under this package; in a
checkout (an editable install, or Python started at the repository root) this package's
path also covers the repository root, where the folders are.
"""

from pathlib import Path as _Path

_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "factory" / "cli.py").is_file():
    __path__.append(str(_root))  # noqa: F821  (a package's own __path__)

__all__ = ["PARTS"]

PARTS = ("factory", "sandboxes", "toolgen", "verifiers", "model", "kernels")
