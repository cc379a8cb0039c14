"""Score-guided quadrature: per-target nodes placed by forward-only probes, one backward per chunk, and
refinement that measures each segment's error against the probed scores."""

import pytest
import torch

import llm_attrib
from llm_attrib import Attributor
from llm_attrib.core.engine import integrate
from llm_attrib.core.guided import Run, guided_integral
from llm_attrib.core.paths import PolylinePaths, RoutedNodes, Routes, StraightPaths
from llm_attrib.core.quadrature import gauss_legendre, variation_edges
from llm_attrib.core.sequence import Sequence
from llm_attrib.core.spaces import EmbeddingSpace
from llm_attrib.core.targets import resolve_target
from llm_attrib.methods.base import Problem
from tiny_tokenizer import tiny_llama, tiny_tokenizer

PROMPT = "w1 w7 w3 w9 w4 w12"


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(), tiny_tokenizer(64)


def test_route_points_and_velocities_equal_the_polyline_formula():
    """Points and velocities come from each distinct piece's vertices gathered once (a broadcast view for a
    straight route): they equal v_j + t (v_{j+1} - v_j) and J (v_{j+1} - v_j) computed position by position,
    on one straight route and on several polylines, corners assigned to the piece asked for."""
    torch.manual_seed(0)
    for vertices in (torch.randn(1, 2, 3, 4), torch.randn(3, 4, 3, 4)):
        routes = Routes(vertices)
        n_pieces = vertices.shape[1] - 1
        route = torch.randint(0, len(vertices), (9,))
        s = torch.rand(9, dtype=torch.float64)
        s[:2] = torch.tensor([0.0, 1.0])
        if n_pieces > 1:
            s[2] = 1 / n_pieces  # a corner, taken on the piece before it
        piece = (s * n_pieces).floor().long().clamp(max=n_pieces - 1)
        piece[2] = 0
        points, velocity = routes.at_with_velocity(route, s, piece)
        for a in range(9):
            here, after = vertices[route[a], piece[a]], vertices[route[a], piece[a] + 1]
            t = float(s[a] * n_pieces - piece[a])
            torch.testing.assert_close(points[a], here + t * (after - here))
            torch.testing.assert_close(velocity[a], n_pieces * (after - here))
        torch.testing.assert_close(routes.at(route, s, piece), points)


def test_edges_crowd_where_the_score_jumps():
    scores = torch.cat([torch.zeros(20), torch.linspace(0, 10, 5)[1:], torch.full((8,), 10.0)])  # 33 probes
    edges = variation_edges(scores, n_segments=8)
    assert edges[0] == 0 and edges[-1] == len(scores) - 1 and (edges.diff() > 0).all()
    inside_jump = ((edges >= 20) & (edges <= 24)).sum()
    assert inside_jump >= 3  # most edges sit in the 4 probe intervals where all the change is


def test_flat_score_gets_uniform_edges():
    edges = variation_edges(torch.zeros(33), n_segments=4)
    assert edges.tolist() == [0, 8, 16, 24, 32]


def test_targeted_nodes_equal_per_target_backward(lm):
    """Nodes of mixed targets, several at each point, each get their own target's gradient exactly, from one
    forward per point."""
    model, tokenizer = lm
    attributor = Attributor(model, tokenizer, show_progress=False)
    seq: Sequence = attributor.sequence(PROMPT, answer="w5 w6 w8")
    space = EmbeddingSpace()
    problem = Problem(model, tokenizer, seq, space, resolve_target("log_prob", None, 64), 5, False)
    x = space.point(model, seq)
    start = space.baseline(None, model, tokenizer, seq, x)
    nodes, weights = gauss_legendre(6)
    shared = integrate(problem.scores, StraightPaths(x, start[None], nodes, weights), x, space.reduce, 5,
                       show_progress=False)
    n_targets = seq.n_targets
    targeted = integrate(problem.scores, RoutedNodes(
        routes=Routes(torch.stack([start, x])[None]), route=torch.zeros(6 * n_targets, dtype=torch.long),
        s=nodes.double().repeat(n_targets), weight=weights.double().repeat(n_targets),
        target=torch.arange(n_targets).repeat_interleave(6), bucket=torch.arange(n_targets).repeat_interleave(6),
        n_buckets=n_targets), x, space.reduce, 5, show_progress=False)
    assert targeted.tokens.shape == (n_targets, 1, seq.length)
    torch.testing.assert_close(targeted.tokens[:, 0], shared.tokens[0], atol=1e-6, rtol=1e-5)
    assert targeted.n_backward == 6 * n_targets == shared.n_backward
    assert targeted.n_forward == 2 + 6  # the targets' nodes coincide: each point runs forward once, plus the ends


def test_shared_points_of_mixed_multiplicity_waste_no_backward(lm):
    """Points serving 3, 2 and 1 targets in one integral: each node still gets its own target's gradient, each
    point runs forward once, and the backward passes are exactly one per node (chunks never mix points of
    different multiplicity, whatever order the nodes come in)."""
    model, tokenizer = lm
    attributor = Attributor(model, tokenizer, show_progress=False)
    seq = attributor.sequence(PROMPT, answer="w5 w6 w8")
    space = EmbeddingSpace()
    problem = Problem(model, tokenizer, seq, space, resolve_target("log_prob", None, 64), 4, False)
    x = space.point(model, seq)
    start = space.baseline(None, model, tokenizer, seq, x)
    s = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.1, 0.3, 0.5, 0.2, 0.1, 0.6], dtype=torch.float64)
    target = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    shuffle = torch.randperm(len(s), generator=torch.Generator().manual_seed(0))
    s, target = s[shuffle], target[shuffle]
    routes = Routes(torch.stack([start, x])[None])
    nodes = RoutedNodes(routes=routes, route=torch.zeros(len(s), dtype=torch.long), s=s,
                        weight=torch.ones(len(s), dtype=torch.float64), target=target,
                        bucket=torch.arange(len(s)), n_buckets=len(s))
    together = integrate(problem.scores, nodes, x, space.reduce, 4, show_progress=False)
    assert together.n_backward == len(s)
    assert together.n_forward == 2 + 7  # distinct points: 0.1 (3 targets), 0.3, 0.5 (2), 0.2, 0.6, 0.7, 0.9
    for k in range(len(s)):  # each node alone: its own forward and backward
        alone = integrate(problem.scores, RoutedNodes(
            routes=routes, route=torch.zeros(1, dtype=torch.long), s=s[k:k + 1], weight=torch.ones(1, dtype=torch.float64),
            target=target[k:k + 1], bucket=torch.zeros(1, dtype=torch.long), n_buckets=1), x, space.reduce, 4,
            show_progress=False)
        torch.testing.assert_close(together.tokens[k, 0], alone.tokens[0, 0], atol=1e-6, rtol=1e-5)
        assert together.point_scores[k] == pytest.approx(float(alone.point_scores[0]), abs=1e-5)


def test_routed_nodes_on_a_polyline_equal_per_piece_quadrature(lm):
    """Nodes placed by s on a 3-piece polyline are the points and displacements of each piece's own rule."""
    model, tokenizer = lm
    seq = Attributor(model, tokenizer, show_progress=False).sequence(PROMPT, answer="w5")
    space = EmbeddingSpace()
    problem = Problem(model, tokenizer, seq, space, resolve_target("log_prob", None, 64), 4, False)
    x = space.point(model, seq)
    generator = torch.Generator().manual_seed(0)
    vertices = torch.stack([x + torch.randn(x.shape, generator=generator) * k for k in (0.0, 0.3, 0.6, 1.0)])
    nodes, weights = gauss_legendre(3)
    pieces = integrate(problem.scores, PolylinePaths(vertices[None], nodes, weights), x, space.reduce, 4,
                       show_progress=False)
    s = torch.cat([(2 - j + nodes.double()) / 3 for j in range(3)])  # route from vertices[-1] (s=0) to x (s=1)
    routed = integrate(problem.scores, RoutedNodes(
        routes=Routes(vertices.flip(0)[None]), route=torch.zeros(9, dtype=torch.long), s=s,
        weight=weights.double().repeat(3) / 3, target=torch.zeros(9, dtype=torch.long),
        bucket=torch.zeros(9, dtype=torch.long), n_buckets=1), x, space.reduce, 4, show_progress=False)
    torch.testing.assert_close(routed.tokens[0, 0], pieces.tokens[0, 0], atol=1e-5, rtol=1e-5)


def _steep(points: torch.Tensor) -> torch.Tensor:
    """Two targets along a 1-d path: a shifted sigmoid of slope 200, and the sum of two."""
    p = points[:, 0]
    one = torch.sigmoid(200 * (p - 0.37))
    return torch.stack([one, one + 2 * torch.sigmoid(200 * (p - 0.81))], 1)


def test_guided_quadrature_integrates_steep_functions_with_far_fewer_nodes():
    run = Run(_steep, lambda contribution, target: (contribution, None), internal_batch_size=64, show_progress=False)
    routes = Routes(torch.tensor([[[0.0], [1.0]]]))
    integral, used = guided_integral(run, routes, lambda route: [0, 1], 2, n_steps=16, tolerance=1e-3,
                                     max_steps=512, n_probes=32)
    exact = _steep(torch.tensor([[1.0]]))[0] - _steep(torch.tensor([[0.0]]))[0]
    errors = (integral.tokens[0].sum(-1) - exact).abs() / exact
    assert (errors <= 1e-3).all()
    assert (used <= 80).all()  # measured 49 and 73; uniform Gauss-Legendre needs 128 (64 give 20% and 8%)
    for target, n_used in enumerate(used[0].tolist()):
        nodes, weights = gauss_legendre(n_used)
        uniform = (weights * torch.autograd.functional.jacobian(
            lambda p: _steep(p[:, None])[:, target].sum(), nodes)).sum()
        assert abs(uniform - exact[target]) / exact[target] > 1e-3  # the same count of uniform nodes misses it


def test_refinement_is_nested_and_discards_no_gradient():
    """Every gradient evaluated is a node of the final composite Boole rule (bisection reuses a panel's 5 nodes
    as its halves' edges and middles), none is evaluated twice, and the result is that rule exactly."""
    evaluated = []

    def recording(points: torch.Tensor) -> torch.Tensor:
        if points.requires_grad:
            evaluated.extend(points[:, 0].tolist())
        return _steep(points)

    run = Run(recording, lambda contribution, target: (contribution, None), internal_batch_size=7, show_progress=False)
    integral, used = guided_integral(run, Routes(torch.tensor([[[0.0], [1.0]]])), lambda route: [1], 2, n_steps=16,
                                     tolerance=1e-3, max_steps=512, n_probes=32)
    nodes = sorted(evaluated)
    assert len(set(nodes)) == len(nodes) == used[0, 1] > 16  # refined, and each gradient computed once
    assert (len(nodes) - 1) % 4 == 0
    panels = torch.tensor(nodes, dtype=torch.float64).unfold(0, 5, 4)  # (n, 5): shared edges
    torch.testing.assert_close(panels.diff(dim=1), panels.diff(dim=1)[:, :1].expand(-1, 4))  # equally spaced
    s = torch.tensor(nodes, requires_grad=True)
    (slope,) = torch.autograd.grad(_steep(s[:, None])[:, 1].sum(), s)
    boole = torch.tensor([7.0, 32.0, 12.0, 32.0, 7.0], dtype=torch.float64) / 90
    rule = sum((boole * (p[-1] - p[0]) * slope.double()[4 * i: 4 * i + 5]).sum() for i, p in enumerate(panels))
    assert abs(float(integral.tokens[0, 1].sum()) - float(rule)) < 1e-4


@pytest.mark.parametrize("space", ["embeddings", "attention"])
def test_one_panel_start_reads_its_scores_off_its_nodes(lm, space):
    """Starting from one panel, the 5 probes would sit exactly on its 5 nodes: nothing is probed, the nodes'
    own forwards give the scores, and the result is the probed run's (same panels, same refinement), with 5
    forwards fewer and no extra backward pass."""
    model, tokenizer = lm
    attributor = Attributor(model, tokenizer, show_progress=False)
    kwargs = dict(answer="w5 w6 w8", space=space, tolerance=1e-3)
    free = attributor.explain(PROMPT, **kwargs)
    probed = attributor.explain(PROMPT, n_probes=4, **kwargs)
    assert free.params["n_steps"] == probed.params["n_steps"]
    assert free.cost["n_backward"] == probed.cost["n_backward"] > 3 * 5  # refined past the first panel
    assert free.cost["n_forward"] == probed.cost["n_forward"] - 5
    torch.testing.assert_close(free.scores, probed.scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(free.completeness_error, probed.completeness_error, rtol=1e-3, atol=1e-6)
    assert free.converged


@pytest.mark.parametrize("space", ["embeddings", "attention"])
def test_score_guided_agrees_with_a_fine_fixed_rule(lm, space):
    model, tokenizer = lm
    attributor = Attributor(model, tokenizer, show_progress=False)
    guided = attributor.explain(PROMPT, answer="w5 w6 w8", space=space, tolerance=1e-4)
    fine = attributor.explain(PROMPT, answer="w5 w6 w8", space=space, quadrature="gauss-legendre", n_steps=256,
                              tolerance=None)
    assert guided.params["quadrature"] == "score-guided" and guided.converged
    assert guided.completeness_error.max() <= 1e-4
    scale = fine.scores.abs().amax(1, keepdim=True)
    assert ((guided.scores - fine.scores).abs() / scale).max() < 1e-2


@pytest.mark.parametrize("space", ["embeddings", "attention"])
def test_score_guided_converges_on_trained_model_with_fewer_gradients(space):
    """On the rag zoo model the scores jump along the path; guided nodes reach 1% on every target with
    fewer backward passes than doubling uniform Gauss-Legendre nodes."""
    model, tokenizer = llm_attrib.zoo.load("rag")
    attributor = Attributor(model, tokenizer, show_progress=False)
    prompt = llm_attrib.zoo.examples("rag", n=1, seed=123)[0]["prompt"]
    guided = attributor.explain(prompt, space=space, max_new_tokens=4)
    uniform = attributor.explain(prompt, space=space, max_new_tokens=4, quadrature="gauss-legendre")
    assert guided.converged and guided.completeness_error.max() <= 0.01
    assert guided.cost["n_backward"] <= uniform.cost["n_backward"]


def test_unconverged_result_is_flagged_and_warned(lm):
    model, tokenizer = lm
    attributor = Attributor(model, tokenizer, show_progress=False)
    with pytest.warns(llm_attrib.ConvergenceWarning, match="not a converged integral"):
        exp = attributor.explain(PROMPT, answer="w5 w6", quadrature="riemann-left", n_steps=2, tolerance=None)
    assert exp.converged is False
    assert exp.completeness_error.max() > 0.01


def test_budget_is_never_exceeded(lm):
    model, tokenizer = lm
    attributor = Attributor(model, tokenizer, show_progress=False)
    guided = attributor.explain(PROMPT, answer="w5 w6 w8", n_steps=32, max_steps=16, tolerance=1e-9)
    steps = guided.params["n_steps"]
    assert max(steps if isinstance(steps, list) else [steps]) <= 16
    assert guided.cost["n_backward"] <= 3 * 16 and guided.converged is False


@pytest.mark.parametrize("space", ["embeddings", "attention"])
def test_first_targets_from_a_shorter_forward_equal_the_full_one(lm, space):
    """A node serving an early target runs only the positions that target depends on: its score and gradient
    equal the full forward's (a causal model's later positions cannot change them)."""
    from llm_attrib.core.spaces import make_space
    from llm_attrib.patching import prepared

    model, tokenizer = lm
    seq = Attributor(model, tokenizer, show_progress=False).sequence(PROMPT, answer="w5 w6 w8")
    the_space = make_space(space)
    with prepared(model, hook_attention=space == "attention"), torch.enable_grad():
        problem = Problem(model, tokenizer, seq, the_space, resolve_target("log_prob", None, 64), 4, False)
        x = the_space.point(model, seq)
        points = torch.stack([x, 0.5 * x]).requires_grad_(True)
        full = problem.scores(points)
        for n in (1, 2, 3):
            torch.testing.assert_close(problem.first_scores(points, n), full[:, :n], atol=1e-5, rtol=1e-5)
        (whole,) = torch.autograd.grad(full[:, 0].sum(), points)
        (short,) = torch.autograd.grad(problem.first_scores(points, 1)[:, 0].sum(), points)
        # Equal wherever the path moves (attention: the gradient at masked keys differs, but x is zero there)
        torch.testing.assert_close(short * x, whole * x, atol=1e-6, rtol=1e-4)
