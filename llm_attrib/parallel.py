"""Process facts for parallel runs, from Accelerate (the only module that imports it).

Two kinds of parallelism: over examples (`evaluate` gives each process its share of the examples), and over
the path points of one explanation (`Attributor(..., shard_points=True)`: every process explains the same
input, takes every n-th chunk of gradient evaluations, and the sums are added across processes). With one
process every function is a pass-through, so single- and multi-process code is the same code. Launch several
with `accelerate launch --multi_gpu` or `torchrun` (one or several machines); without a GPU the processes meet
over gloo on the CPU, with GPUs over NCCL, each on its own GPU (`device()`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import gather_object, reduce

Item = TypeVar("Item")


def state() -> PartialState:
    """Accelerate's process state. Without an accelerator, processes launched by torchrun meet over gloo on the
    CPU (Accelerate would otherwise treat each as a lone process)."""
    return PartialState(cpu=not torch.cuda.is_available())


def my_share(items: Sequence[Item]) -> list[Item]:
    """The items this process handles: a contiguous, deterministic slice."""
    current = state()
    if current.num_processes == 1:
        return list(items)
    with current.split_between_processes(list(items)) as share:
        return list(share)


def device() -> torch.device:
    """The device this process computes on: its own GPU (cuda:LOCAL_RANK) under a launch over several GPUs, the
    GPU of a lone process where there is one, else the CPU. Load each process's model there."""
    return state().device


def gathered(items: Sequence[Item]) -> list[Item]:
    """Every process's items, in process order, on every process (`items` itself with one process)."""
    return list(items) if n_processes() == 1 else gather_object(list(items))


def rank() -> int:
    return state().process_index


def n_processes() -> int:
    return state().num_processes


def is_main() -> bool:
    return state().is_main_process


def wait_for_everyone() -> None:
    state().wait_for_everyone()


def finish() -> None:
    """End a launched run: wait for every process, then close the process group. A process that exits while its
    gloo group is still open can abort ("terminate called without an active exception") when another one is
    still working, e.g. the main process saving the result. A single process has nothing to close."""
    if n_processes() > 1:
        wait_for_everyone()
        state().destroy_process_group()


_SHARDING: contextvars.ContextVar[bool] = contextvars.ContextVar("llm_attrib_sharding", default=False)


@contextlib.contextmanager
def sharding(enabled: bool) -> Iterator[None]:
    """Split the gradient work of the explanations run inside the block across the processes (if several)."""
    token = _SHARDING.set(enabled and n_processes() > 1)
    try:
        yield
    finally:
        _SHARDING.reset(token)


def is_sharding() -> bool:
    return _SHARDING.get()


def my_chunks(chunks: Sequence[Item]) -> list[Item]:
    """The chunks of one explanation's path points this process evaluates: every n-th, so that refinement
    rounds with few chunks still spread them."""
    return list(chunks[rank()::n_processes()]) if is_sharding() else list(chunks)


def sum_across(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over the processes sharing an explanation (itself when not sharding). It is added on
    this process's device (NCCL adds only GPU tensors) and returned where it was."""
    if not is_sharding():
        return tensor
    return reduce(tensor.to(device()), reduction="sum").to(tensor.device)
