"""Build hook: ship the schemas, the models and the example config inside the wheel.

All metadata lives in pyproject.toml; this file only extends ``build_py``. The files stay where
users and the training scripts expect them (``schemas/``, ``models/<name>/<version>/`` and
``scorer.example.toml`` at the repository root); building a wheel copies them into
``stream_scorer/resources/``, where :func:`stream_scorer.settings.resource_root` finds them
once installed. Package-data globs cannot reach outside the package folder, and mapping
``models/`` as a package would ship its training scripts as modules, hence this hook.
An editable install copies nothing: the source tree is the resource root then.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: The repository (or unpacked sdist) root.
ROOT = Path(__file__).resolve().parent
#: Where the files land inside the built package.
TARGET = Path("stream_scorer") / "resources"
#: Suffixes never shipped from a model folder: training code is not part of a model.
EXCLUDED_SUFFIXES = {".py", ".pyc"}


def resource_files() -> list[Path]:
    """Files to ship, relative to ROOT: schemas, every model version folder, the example."""
    files = sorted(ROOT.glob("schemas/*.avsc"))
    files += sorted(
        path
        for path in ROOT.glob("models/*/*/*")
        if path.is_file() and path.suffix not in EXCLUDED_SUFFIXES
    )
    files.append(ROOT / "scorer.example.toml")
    return [path.relative_to(ROOT) for path in files]


class BuildPyWithResources(build_py):
    """``build_py`` that also copies :func:`resource_files` into the package."""

    def run(self) -> None:
        """Build the package, then add the resources (not for an editable install)."""
        super().run()
        if getattr(self, "editable_mode", False):
            return
        files = resource_files()
        names = {path.parts[0] for path in files if (ROOT / path).exists()}
        if names != {"schemas", "models", "scorer.example.toml"}:
            msg = f"build from the repository root: schemas, models or example missing ({names})"
            raise SystemExit(msg)
        for path in files:
            target = Path(self.build_lib) / TARGET / path
            self.mkpath(str(target.parent))
            self.copy_file(str(ROOT / path), str(target))


setup(cmdclass={"build_py": BuildPyWithResources})
