"""One labelled progress bar per explanation: the phases a user waits for (converting a model the first time it is
loaded, generating, attributing N targets, verifying documents) on one line, instead of a bar per integration call.

The bar of the outermost call is the current one (a context variable), so nested work (the engine's chunks,
`rag.explain`'s inner explanation) advances it rather than opening bars of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from contextvars import ContextVar

from tqdm.auto import tqdm

_CURRENT: ContextVar["Progress | None"] = ContextVar("llm_attrib_progress", default=None)


class Progress:
    """A tqdm bar whose label and total change with the phase; shown only on work longer than a second."""

    def __init__(self, enabled: bool) -> None:
        self.bar = tqdm(total=None, delay=1.0, leave=False, disable=not enabled, unit="pass", desc="llm-attrib")

    def phase(self, label: str, total: int | None = None, unit: str | None = "pass") -> None:
        """Show `label` now, with the count of `total` `unit`s when known, else the passes so far; `unit=None`: one
        step nothing counts (converting a tokenizer), only the time."""
        self.bar.set_description(label, refresh=False)
        self.bar.unit = unit or "step"
        if total:
            self.bar.bar_format = None  # tqdm's own: count, share, rate
        elif unit == "pass":
            self.bar.bar_format = "{desc}{n_fmt} batched passes [{elapsed}]"  # desc ends in ": "
        else:
            self.bar.bar_format = "{desc}[{elapsed}]"
        self.bar.reset(total=total)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def track(self, items: Collection, label: str, unit: str) -> Iterator:
        """`items`, one step of the phase `label` each."""
        self.phase(label, total=len(items), unit=unit)
        for item in items:
            yield item
            self.advance()


@contextlib.contextmanager
def progress(enabled: bool) -> Iterator[Progress]:
    """The current explanation's bar: a new one, or the enclosing call's."""
    outer = _CURRENT.get()
    if outer is not None:
        yield outer
        return
    bar = Progress(enabled)
    token = _CURRENT.set(bar)
    try:
        yield bar
    finally:
        _CURRENT.reset(token)
        bar.bar.close()


def current() -> Progress | None:
    return _CURRENT.get()
