"""The files the package ships beside its code: the embedded benchmark's base config
(``configs/embedded.yaml``) and its pretrained weights (``weights/embedded/``).

In a clone they lie at the project root; an installed package (``pip install dakd``) carries
them in its ``_shipped`` folder (``setup.py`` copies them into the wheel). A spec or config names
them by their path in the clone (``weights/embedded/teacher_da-synth_to_real.pt``); where that
path is not there (a spec run outside the clone), :func:`shipped_file` finds the shipped copy.
A shipped weights file enters stage keys by its content (the ``manifest.json`` beside it), so
either copy gives the same fingerprints.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The folder of an installed package's shipped files (absent in a clone).
INSTALLED = "_shipped"

#: What the package ships: folders of the project root and the files of each (glob patterns).
SHIPPED = {"configs": ("embedded.yaml",), "weights/embedded": ("*.pt", "manifest.json")}


def shipped_root() -> Path:
    """The folder the shipped files lie under: the installed package's ``_shipped``, else the
    root of the clone this package is imported from."""
    package = Path(__file__).resolve().parents[1]
    installed = package / INSTALLED
    return installed if installed.is_dir() else package.parent


def shipped_file(path: str | os.PathLike) -> Path | None:
    """The shipped file a relative ``path`` names (``weights/embedded/teacher_da-synth_to_real.pt``,
    ``configs/embedded.yaml``; ``..`` parts are resolved first), or None when the package ships
    no such file."""
    relative = os.path.normpath(path)
    if os.path.isabs(relative) or relative.startswith(".."):
        return None
    found = shipped_root() / relative
    return found if found.is_file() else None


def input_file(path: str, root: str | os.PathLike) -> str:
    """A file a run reads, named by ``path``: absolute as given, else under ``root`` when it is
    there, else the shipped file of that name (:func:`shipped_file`), else under ``root`` (where
    the error names it)."""
    if not path or "://" in path or os.path.isabs(path):
        return path
    local = os.path.join(root, path)
    if os.path.exists(local):
        return local
    shipped = shipped_file(path)
    return str(shipped) if shipped is not None else local
