"""Document Shapley values: each document's share of the answer, by removing subsets of documents.

A handful of retrieved documents is a small game: with D documents there are 2^D subsets, each one forward of the
prompt re-rendered with only those documents (as leave-one-out removes them). The Shapley value of a document is
its mean marginal contribution to the answer's log-probability over every order in which documents could be
added; the values sum to log p(answer | all documents) - log p(answer | none), the discrete counterpart of IG's
completeness over the mask space (IG along the diagonal of the game's multilinear extension is exactly this
value, Owen 1972). Where leave-one-out sees only the last step of each order, Shapley shares an answer two
documents both state between them. Beyond the forward budget, orders are sampled (each with its reverse) and the
values carry standard errors, marked as estimates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError


DEFAULT_BUDGET = 64  # forwards: exact up to 6 documents; ContextCite's default number of ablations


@dataclass
class DocumentShapley:
    """Shapley values of documents for each answer segment (in `rag.explain`, each answer sentence).

    Attributes:
        values: (segments, documents) nats each document contributes to each segment's log-probability (documents
            last, as in every per-document table of a `RagExplanation`).
        full, empty: (segments,) log-probabilities with every document and with none; a row of values sums to
            full - empty.
        exact: every subset was evaluated; otherwise `values` average `n_orders` sampled orders.
        stderr: (segments, documents) standard error of a sampled estimate (zeros when exact).
        n_subsets: distinct subsets of documents evaluated (a forward each, unless shared with leave-one-out).
        n_orders: orders averaged (D! implicitly when exact).
    """

    values: torch.Tensor
    full: torch.Tensor
    empty: torch.Tensor
    exact: bool
    stderr: torch.Tensor
    n_subsets: int
    n_orders: int

    def to_dict(self) -> dict:
        return {"values": self.values.tolist(), "full": self.full.tolist(), "empty": self.empty.tolist(),
                "exact": self.exact, "stderr": self.stderr.tolist(), "n_subsets": self.n_subsets,
                "n_orders": self.n_orders}

    @classmethod
    def from_dict(cls, data: dict) -> DocumentShapley:
        tensors = {k: torch.tensor(data[k], dtype=torch.float64) for k in ("values", "full", "empty", "stderr")}
        return cls(**tensors, exact=data["exact"], n_subsets=data["n_subsets"], n_orders=data["n_orders"])


def exact_shapley(values: torch.Tensor) -> torch.Tensor:
    """(S, D) Shapley values from (2^D, S) coalition values, row m being the subset whose bit i is set when
    player i is in it."""
    n_subsets = values.shape[0]
    n_players = n_subsets.bit_length() - 1
    if n_subsets != 1 << n_players:
        raise InvalidInputError(f"exact_shapley needs 2^D coalition values, got {n_subsets}.")
    masks = torch.arange(n_subsets)
    members = (masks[:, None] >> torch.arange(n_players)) & 1  # (2^D, D)
    size = members.sum(1)
    weight = torch.tensor([math.factorial(k) * math.factorial(n_players - k - 1) / math.factorial(n_players)
                           for k in range(n_players)], dtype=torch.float64)
    out = torch.zeros(values.shape[1], n_players, dtype=torch.float64)
    for i in range(n_players):
        without = masks[members[:, i] == 0]
        out[:, i] = (weight[size[without]][:, None] * (values[without | (1 << i)] - values[without]).double()).sum(0)
    return out


def check_budget(budget: int, n_documents: int, name: str = "budget") -> None:
    """Refuse a forward budget that cannot hold even the answer with all documents and with none."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 2:
        raise InvalidInputError(f"{name}={budget!r} forwards cannot evaluate even all and none of the documents; give "
                                f"an integer of at least 2 (2^D = {2 ** n_documents} for exact values).")


def sample_orders(n_players: int, budget: int, generator: torch.Generator) -> list[list[int]]:
    """Random orders of the players, each followed by its reverse (antithetic: the pair's marginals are negatively
    correlated), drawn without repetition until their prefixes cover `budget` distinct subsets (at least two
    pairs, for a standard error). They depend on nothing but the generator, so every subset they need is known
    before any forward."""
    seen, drawn, orders = {0, (1 << n_players) - 1}, set(), []
    while (len(seen) < budget or len(orders) < 4) and len(drawn) < math.factorial(n_players):
        order = torch.randperm(n_players, generator=generator).tolist()
        if tuple(order) in drawn:  # an order already drawn (or its reverse) adds nothing
            continue
        drawn.update({tuple(order), tuple(order[::-1])})
        for sequence in (order, order[::-1]):
            orders.append(sequence)
            seen.update(prefix_masks(sequence))
    return orders


def prefix_masks(order: list[int]) -> list[int]:
    """The subsets (as bit masks) an order passes through, after each of its players joins."""
    masks, mask = [], 0
    for player in order:
        mask |= 1 << player
        masks.append(mask)
    return masks


def order_average(values: dict[int, torch.Tensor], orders: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, stderr) (S, D): the players' marginal contributions averaged over `orders` (pairs of an order and
    its reverse), from the coalition values `values[mask]` (S,). Every order's marginals sum to full - empty, so
    the estimate keeps completeness."""
    marginals = []
    for order in orders:
        marginal, before = [None] * len(order), values[0]
        for player, mask in zip(order, prefix_masks(order)):
            marginal[player], before = values[mask] - before, values[mask]
        marginals.append(torch.stack(marginal, -1))
    pairs = torch.stack(marginals).unflatten(0, (-1, 2)).mean(1)  # (pairs, S, D)
    return pairs.mean(0), pairs.std(0) / math.sqrt(len(pairs))


def document_shapley(log_probs: Callable[[list[list[int]]], torch.Tensor], n_documents: int,
                     budget: int = DEFAULT_BUDGET, seed: int = 0) -> DocumentShapley:
    """(S, D) Shapley values of `n_documents` documents, where `log_probs(subsets)` is the answer segments'
    log-probabilities (N, S) with only each subset's documents (a list of kept documents) in the prompt, asked once
    for every subset needed, so they can share forwards. Exact when 2^D <= budget, else sampled to about `budget`
    forwards (at least two pairs of orders; exact after all if those visited every subset)."""
    if n_documents < 1:
        raise InvalidInputError("Shapley values need at least one document.")
    check_budget(budget, n_documents)
    n_subsets = 1 << n_documents
    orders = sample_orders(n_documents, budget, torch.Generator().manual_seed(seed)) if n_subsets > budget else None
    masks = range(n_subsets) if orders is None else sorted({0, n_subsets - 1}.union(*map(prefix_masks, orders)))
    table = log_probs([[d for d in range(n_documents) if mask >> d & 1] for mask in masks]).double()
    values = dict(zip(masks, table))
    exact = len(values) == n_subsets  # every subset (or the sampled orders happened to visit all)
    if exact:
        shapley, n_orders = exact_shapley(table), math.factorial(n_documents)
        stderr = torch.zeros_like(shapley)
    else:
        (shapley, stderr), n_orders = order_average(values, orders), len(orders)
    return DocumentShapley(values=shapley, full=values[n_subsets - 1], empty=values[0], exact=exact, stderr=stderr,
                           n_subsets=len(values), n_orders=n_orders)
