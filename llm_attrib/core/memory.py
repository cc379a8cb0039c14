"""Memory: what one path point costs, and the chunk of points that fits a byte budget.

Eager attention materialises every layer's (heads x L x L) scores and probabilities, and the backward keeps
them, so memory grows with L^2: a 2000-token prompt on a 30-layer model needs gigabytes per path point. The
Attributor chooses its chunk from the bytes one point really keeps, measured on the model itself by counting
the tensors its forward saves for the backward, at short prompts (so a prompt that cannot fit stops at once
with the figures, instead of dying in the allocator minutes later). The retriever measures its point directly
(a query and a document are short).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves

from ..errors import InvalidInputError
from ..patching import layer_probe
from .soft_mask_attention import workspace_counted
from .placement import execution_devices, offloaded_bytes

HEADROOM = 0.7
# Beyond the saved tensors a point holds the forward's transients: on a 4-layer, d=256 Llama over a 2000-token
# prompt (attention space, chunk 6) the measured peak was about this factor times the saved bytes.
TRANSIENT_FACTOR = 1.5
MAX_CHUNK = 64


def available_bytes(device: torch.device) -> int:
    """Free memory on the device: CUDA's free memory; on the host the smallest of the available physical memory
    and what this process's limits leave (`process_limit_bytes`). Available, not free: the kernel's MemAvailable
    counts the page cache it can drop, which on a busy machine is most of the memory (free pages alone made the
    default budget a sixth of what could be used)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    host = _kib_field("/proc/meminfo", "MemAvailable")
    if not host:
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            host = 8 * 2**30
    limit = process_limit_bytes()
    return host if limit is None else max(0, min(host, limit))


def process_limit_bytes() -> int | None:
    """What the process may still allocate under its own limits, or None without one: the address-space rlimit
    (RLIMIT_AS, e.g. `ulimit -v`) less the address space in use, and the cgroup's memory limit (v2 memory.max,
    v1 memory.limit_in_bytes, as containers and job schedulers set) less its current usage. The host's free
    memory says nothing of these, and a point sized by it dies in the allocator."""
    room = []
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            room.append(soft - _status_bytes("VmSize"))
    except (ImportError, OSError, ValueError):
        pass
    for limit_file, usage_file in (("memory.max", "memory.current"), ("memory.limit_in_bytes", "memory.usage_in_bytes")):
        limit, usage = _cgroup_number(limit_file), _cgroup_number(usage_file)
        if limit is not None and limit < 2**60:
            room.append(limit - (usage or 0))
            break
    return min(room) if room else None


def _status_bytes(field: str) -> int:
    """A size field of /proc/self/status (e.g. VmSize), in bytes; 0 where there is none."""
    return _kib_field("/proc/self/status", field)


def _kib_field(path: str, field: str) -> int:
    """A "Name: N kB" field of a /proc file, in bytes; 0 where there is none (or no /proc)."""
    try:
        with open(path) as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cgroup_number(name: str, root: str = "/") -> int | None:
    """A number from this process's cgroup folder (v2 unified, or the v1 memory controller) under `root`; None if
    absent or unlimited ("max")."""
    folders = []
    try:
        with open(os.path.join(root, "proc/self/cgroup")) as groups:
            for line in groups:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    folders.append(f"sys/fs/cgroup{path}")
                elif "memory" in controllers.split(","):
                    folders.append(f"sys/fs/cgroup/memory{path}")
    except (OSError, ValueError):
        return None
    for folder in folders + ["sys/fs/cgroup", "sys/fs/cgroup/memory"]:
        try:
            with open(os.path.join(root, folder, name)) as f:
                text = f.read().strip()
        except OSError:
            continue
        return None if text == "max" else int(text) if text.isdigit() else None
    return None


def checked_optional(value: object, name: str) -> int | None:
    """`internal_batch_size` or `memory_budget` as given: a positive integer, or None for the default."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidInputError(f"{name} must be a positive integer (or None for the default), got {value!r}.")
    return value


def budget_bytes(model, memory_budget: int | None = None, backward: bool = True) -> int:
    """The bytes a chunk may use: `memory_budget`, or a share of the free memory of the device that has the least
    of it among those the model computes on (a chunk's activations pass through each of them), less, for work
    with a `backward`, the offloaded weights a backward holds there."""
    if memory_budget is not None:
        return memory_budget
    loaded = offloaded_bytes(model) if backward else {}
    free = {device: int(HEADROOM * available_bytes(device)) for device in execution_devices(model)}
    device = min(free, key=lambda d: free[d] - loaded.get(d, 0))
    if loaded.get(device, 0) >= max(free[device], 1):
        raise InvalidInputError(
            f"a backward through this offloaded model holds all its weights offloaded to {device} at once "
            f"({loaded[device] / 2**30:.2f} GiB: autograd keeps each layer's weights for the gradient of its input), "
            f"more than the {free[device] / 2**30:.2f} GiB the budget allows there ({HEADROOM:.0%} of the free "
            "memory). Offload less to that device, quantize the weights, pass memory_budget= to override, or use "
            "method='attention'."
        )
    return free[device] - loaded.get(device, 0)


def storages(tensor: torch.Tensor) -> dict[int, int]:
    """Address -> bytes of the storages behind a tensor; a tensor subclass (a quantized weight) holds its data
    in inner tensors and has no storage of its own."""
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return {k: v for name in names for k, v in storages(getattr(tensor, name)).items()}
    storage = tensor.untyped_storage()
    return {storage.data_ptr(): storage.nbytes()}


def saved_bytes(scores: Callable[[torch.Tensor], torch.Tensor], point: torch.Tensor, model,
                recompute: bool = False) -> int:
    """Bytes one path point really keeps: every tensor its forward saves for the backward, counted once per
    storage, the model's parameters excluded (they are there anyway, or, offloaded, loaded once per chunk), plus
    its gradient and contribution. An offloaded model's weights are looked up as each tensor is saved, because
    its hooks give a module its weights only while it runs.

    With `recompute` (forwards run under `patching.recomputed`), a checkpointed layer keeps only its inputs, and
    the backward holds one layer's saved tensors at a time when it runs that layer again: the count is what the
    rest of the forward saves, every layer's inputs, and twice the largest layer's own saved tensors (they, and
    gradients of their size, while the backward runs that layer). The soft-mask
    attention's working memory (a layer's additive mask, the backward's block) is added once: one layer runs at a
    time."""

    def weights() -> set[int]:
        return {address for p in model.parameters() if p.device.type != "meta" for address in storages(p)}

    held, offloaded = weights(), any(p.device.type == "meta" for p in model.parameters())
    saved: dict[int, int] = {}
    largest_layer = 0

    def keeper(into: dict[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
        def pack(tensor: torch.Tensor) -> torch.Tensor:
            for address, size in storages(tensor).items():
                if address not in held and not (offloaded and address in weights()):
                    into[address] = size
            return tensor
        return pack

    def layer(forward: Callable, args: tuple, kwargs: dict) -> object:
        nonlocal largest_layer
        for leaf in tree_leaves((args, kwargs)):
            if isinstance(leaf, torch.Tensor):
                keeper(saved)(leaf)
        inside: dict[int, int] = {}
        with torch.autograd.graph.saved_tensors_hooks(keeper(inside), lambda tensor: tensor):
            output = forward(*args, **kwargs)
        largest_layer = max(largest_layer, sum(inside.values()))
        return output

    with (torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(keeper(saved), lambda tensor: tensor),
          layer_probe(layer) if recompute else contextlib.nullcontext(), workspace_counted() as workspace):
        scores(point.detach().unsqueeze(0).requires_grad_(True))
    return sum(saved.values()) + 2 * largest_layer + max(workspace, default=0) + 3 * point.float().nbytes


SHORT_PROMPTS = (8, 16, 32)


def length_polynomial(measure: Callable[[int], int]) -> torch.Tensor:
    """Coefficients (3,) of a point's bytes as a quadratic in the prompt's length, from `measure` (prompt
    length -> bytes) at short prompts: the saved tensors are each layer's L x L attention and things linear in
    L, so three short measurements determine every length, and a long prompt is never run to find out that it
    does not fit."""
    lengths = torch.tensor(SHORT_PROMPTS, dtype=torch.float64)
    measured = torch.tensor([float(measure(n)) for n in SHORT_PROMPTS], dtype=torch.float64)
    return torch.linalg.solve(torch.vander(lengths, 3), measured)


def bytes_at(coefficients: torch.Tensor, n_prompt: int) -> int:
    return int(torch.vander(torch.tensor([float(n_prompt)], dtype=torch.float64), 3) @ coefficients)


def fitting_points(per_point: int, budget: int) -> int:
    """How many path points the budget holds at the measured cost (0 if not one)."""
    return int(budget // (TRANSIENT_FACTOR * per_point))


def measured_chunk(per_point: int, budget: int, requested: int | None, what: str) -> int:
    """Path points per forward: as many as the budget holds at the measured cost (at most MAX_CHUNK), or the
    requested chunk if it fits; a budget below one point is a clear error."""
    fits = fitting_points(per_point, budget)
    if fits < 1:
        raise InvalidInputError(
            f"{what} keeps {TRANSIENT_FACTOR * per_point / 2**20:.0f} MiB (measured), and the "
            f"memory budget is {budget / 2**20:.0f} MiB; raise memory_budget, shorten the prompt, choose fewer "
            "attention layers (layers=...), or, over attention, use space='mask' or space='embeddings' (a point "
            "of the attention space holds layers x heads x L^2 probabilities; with recompute the mask and "
            "embeddings spaces' points grow with L)."
        )
    return min(fits, MAX_CHUNK if requested is None else requested)
