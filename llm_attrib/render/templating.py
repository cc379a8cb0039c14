"""Pages are rendered from Jinja2 templates (package data in `templates/`) with autoescaping on, so every value
placed in a page is text, never markup, unless a template marks it safe on purpose."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

# What a JSON text must not hold verbatim inside a <script> element: `</script>` or `<!--` would end or change the
# element, `&` starts a character reference in XHTML, and U+2028/9 end a line in older JavaScript.
_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


@cache
def environment() -> Environment:
    """The one Jinja2 environment of the package's pages: autoescaped, and an unknown name is an error."""
    env = Environment(
        loader=PackageLoader("llm_attrib.render", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["script_json"] = script_json
    env.globals["asset"] = asset
    return env


def render(template: str, **context: Any) -> str:
    """The page `template` (a file in `templates/`) filled with `context`."""
    return environment().get_template(template).render(**context)


def script_json(data: Any) -> Markup:
    """`data` as JSON that is safe inside `<script type="application/json">`: it cannot close the element."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    return Markup("".join(_SCRIPT_UNSAFE.get(c, c) for c in text))


@cache
def asset(name: str) -> Markup:
    """A static file of `templates/` (a page's CSS or JavaScript), inlined as is: it is the package's own code,
    not a template, so braces in it are never read as template syntax."""
    return Markup((files("llm_attrib.render") / "templates" / name).read_text(encoding="utf-8"))
