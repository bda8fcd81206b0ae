"""The wheel carries the files the package ships beside its code.

The embedded benchmark's base config and pretrained weights lie at the project root
(``configs/``, ``weights/embedded/``), where a clone and its specs name them; a built package
carries copies in ``dakd/_shipped/``, where :mod:`dakd.models.shipped` finds them. The rest of
the build is ``pyproject.toml``'s.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: The same table as ``dakd.models.shipped.SHIPPED`` (the build does not import the package).
SHIPPED = {"configs": ("embedded.yaml",), "weights/embedded": ("*.pt", "manifest.json")}


class BuildWithShipped(build_py):
    """``build_py`` that also copies the shipped files into ``dakd/_shipped`` of the build (an
    editable install reads them in the clone itself)."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        for folder, patterns in SHIPPED.items():
            found = sorted({p for pattern in patterns for p in (ROOT / folder).glob(pattern)})
            if not found:
                raise FileNotFoundError(f"nothing to ship in {ROOT / folder} ({patterns})")
            target = Path(self.build_lib, "dakd", "_shipped", folder)
            self.mkpath(str(target))
            for path in found:
                self.copy_file(str(path), str(target / path.name))


setup(cmdclass={"build_py": BuildWithShipped})
