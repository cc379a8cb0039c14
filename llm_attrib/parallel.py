"""Process facts for data-parallel runs, from Accelerate (the only module that imports it).

With one process every function is a pass-through, so single- and multi-process code is the same code.
Launch several with `accelerate launch -m llm_attrib.cli evaluate ...`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from accelerate import PartialState

Item = TypeVar("Item")


def state() -> PartialState:
    return PartialState()


def my_share(items: Sequence[Item]) -> list[Item]:
    """The items this process handles: a contiguous, deterministic slice."""
    current = state()
    if current.num_processes == 1:
        return list(items)
    with current.split_between_processes(list(items)) as share:
        return list(share)


def rank() -> int:
    return state().process_index


def n_processes() -> int:
    return state().num_processes


def is_main() -> bool:
    return state().is_main_process


def wait_for_everyone() -> None:
    state().wait_for_everyone()
