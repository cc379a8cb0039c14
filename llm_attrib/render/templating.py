"""Pages are rendered from Jinja2 templates (package data in `templates/`) with autoescaping on, so every value
placed in a page is text, never markup, unless a template marks it safe on purpose."""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


@cache
def environment() -> Environment:
    """The one Jinja2 environment of the package's pages: autoescaped, and an unknown name is an error."""
    return Environment(
        loader=PackageLoader("llm_attrib.render", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> str:
    """The page `template` (a file in `templates/`) filled with `context`."""
    return environment().get_template(template).render(**context)
