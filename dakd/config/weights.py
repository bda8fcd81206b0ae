"""Weight files by their content: the sha256 that enters stage keys, computed once per file, and
the sha256 prefix a published file carries in its name, checked on first use.

A stage key (:meth:`dakd.config.ExperimentConfig.fingerprint`) must name the same stage in a
clone at another path and on another node with another mount point, so a weights file enters it
by what it holds, not where it lies. Hashing a 100 MB file takes about a second; the digest is
remembered beside the file, in ``<file>.sha256`` (its size and modification time with it, so a
changed file is hashed again), and in the process. Where the folder cannot be written (a
read-only mount) the file is hashed once per process.

Published weights name the first hex digits of their sha256 after the last ``-`` of the file
name (PyTorch's model-zoo convention: ``drn_d_38-eebb45f0.pth``, ``resnet50-0676ba61.pth``):
:func:`check_published` refuses a file whose content does not start so, in one line naming it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path

from dakd.config.build import ConfigError

#: The suffix of the file holding a weights file's digest, beside it.
SIDECAR = ".sha256"

#: ``<stem>-<hex>.<ext>``: the hex digits a published file's name gives of its sha256.
_PUBLISHED = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z][A-Za-z0-9.]*$")


def published_prefix(path: str | Path) -> str:
    """The sha256 prefix a published weights file's name carries ("" when it carries none)."""
    match = _PUBLISHED.search(Path(path).name)
    return match.group(1) if match else ""


def file_sha256(path: str | Path, remember: bool = True) -> str:
    """The sha256 (hex) of the file at ``path``, hashed once: read from ``<file>.sha256`` while
    the file keeps the size and modification time recorded there, else hashed and (with
    ``remember``, where the folder is writable) recorded. Raises ``OSError`` when the file
    cannot be read."""
    path = os.path.abspath(path)
    stat = os.stat(path)
    return _sha256(path, stat.st_size, stat.st_mtime_ns, remember)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int, remember: bool) -> str:
    sidecar = Path(path + SIDECAR)
    if remember:
        try:
            known = json.loads(sidecar.read_text())
            if known.get("size") == size and known.get("mtime_ns") == mtime_ns:
                digest = str(known["sha256"])
                if re.fullmatch(r"[0-9a-f]{64}", digest):
                    return digest
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # none yet, or unreadable: hash the file
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    hexdigest = digest.hexdigest()
    if remember:
        record = {"sha256": hexdigest, "size": size, "mtime_ns": mtime_ns}
        tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(record) + "\n")
            tmp.replace(sidecar)  # whole or not at all, whoever writes it at the same time
        except OSError:
            tmp.unlink(missing_ok=True)  # a read-only folder: remembered in this process only
    return hexdigest


def check_published(path: str | Path, key: str) -> None:
    """Refuse, with one :class:`ConfigError` naming ``key`` and the file, a weights file whose
    name gives a sha256 prefix its content does not have (a truncated download, another file
    renamed); nothing to check for a name without one, or a file that is not there."""
    prefix = published_prefix(path)
    if not prefix or not os.path.isfile(path):
        return
    found = file_sha256(path)
    if not found.startswith(prefix):
        raise ConfigError(
            f"{key}: {path}: its sha256 begins {found[: len(prefix)]}, not {prefix} as its "
            "name says: the file is corrupt or not the published one; download it again"
        )
