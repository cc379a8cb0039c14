"""Attribution methods, registered by name. Each is a composition of the engine's parts."""

from .base import METHODS, Method, MethodResult, Problem, get_method, register_method
from . import attention, gradient, ig, ig2, random, rpi  # noqa: F401  (registration)

__all__ = ["METHODS", "Method", "MethodResult", "Problem", "get_method", "register_method"]
