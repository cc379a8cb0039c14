import math

import pytest
import torch

from llm_attrib.core.quadrature import QUADRATURES, quadrature
from llm_attrib.errors import InvalidInputError, UnknownNameError


def test_hand_computed_tables():
    nodes, weights = quadrature("riemann-left", 4)
    assert nodes.tolist() == [0.0, 0.25, 0.5, 0.75] and weights.tolist() == [0.25] * 4
    nodes, _ = quadrature("riemann-right", 4)
    assert nodes.tolist() == [0.25, 0.5, 0.75, 1.0]
    nodes, _ = quadrature("riemann-middle", 2)
    assert nodes.tolist() == [0.25, 0.75]
    nodes, weights = quadrature("trapezoid", 3)
    assert nodes.tolist() == [0.0, 0.5, 1.0] and weights.tolist() == [0.25, 0.5, 0.25]
    nodes, weights = quadrature("riemann-inclusive", 2)
    assert nodes.tolist() == [0.0, 0.5, 1.0] and torch.allclose(weights, torch.full((3,), 1 / 3))
    nodes, weights = quadrature("gauss-legendre", 2)
    assert torch.allclose(nodes, torch.tensor([0.5 - 0.5 / math.sqrt(3), 0.5 + 0.5 / math.sqrt(3)]))
    assert torch.allclose(weights, torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("name", sorted(QUADRATURES))
def test_weights_sum_to_one_and_nodes_in_unit_interval(name):
    nodes, weights = quadrature(name, 7)
    assert abs(weights.sum().item() - 1) < 1e-6
    assert nodes.min() >= 0 and nodes.max() <= 1


def test_gauss_legendre_is_exact_for_high_degree_polynomials():
    nodes, weights = quadrature("gauss-legendre", 5)
    assert abs((weights * nodes.double() ** 9).sum().item() - 0.1) < 1e-6


def test_errors():
    with pytest.raises(UnknownNameError, match="gauss-legendre"):
        quadrature("simpson", 4)
    with pytest.raises(InvalidInputError):
        quadrature("riemann-left", 0)
    with pytest.raises(InvalidInputError):
        quadrature("trapezoid", 1)
