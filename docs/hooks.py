"""MkDocs hook: the measurement pages under eval/results/ become pages of the site, and links written as they
resolve in the repository (docs/guides/x.md -> ../../eval/results/speed.md) are rewritten to the site's layout.

The pages stay where the evaluation scripts write them; the site mounts them at eval/results/..., so a link that
works on GitHub also works in the site, and `mkdocs build --strict` fails on one that works in neither."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parent.parent
MOUNTED = REPO / "eval" / "results"
SUFFIXES = {".md", ".png"}
LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(\))")


def on_files(files, config):
    for path in sorted(MOUNTED.rglob("*")):
        if path.suffix in SUFFIXES and path.is_file():
            uri = path.relative_to(REPO).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def _site_uri(path: Path, docs_dir: Path) -> str | None:
    """Where a repository file is in the site, or None when the site does not have it."""
    if path.is_relative_to(docs_dir):
        return path.relative_to(docs_dir).as_posix()
    if path.is_relative_to(MOUNTED) and path.suffix in SUFFIXES:
        return path.relative_to(REPO).as_posix()
    return None


def on_page_markdown(markdown, page, config, files):
    docs_dir = Path(config["docs_dir"]).resolve()
    here = Path(page.file.abs_src_path).resolve().parent
    page_dir = os.path.dirname(page.file.src_uri)

    def rewrite(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            return match.group(0)
        uri = _site_uri((here / target).resolve(), docs_dir)
        if uri is None:
            return match.group(0)
        new = os.path.relpath(uri, page_dir or ".").replace(os.sep, "/")
        return f"{match.group(1)}{new}{match.group(3) or ''}{match.group(4)}"

    return LINK.sub(rewrite, markdown)
