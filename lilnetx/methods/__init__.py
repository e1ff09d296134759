"""Compression methods, one per module, registered by name: ``lilnetx`` (the paper's method),
``dense``, ``quant`` and ``imp`` (baselines), and any installed through the
``lilnetx.methods`` entry-point group. See :mod:`lilnetx.methods.base` for the protocol."""

from .base import (
    METHODS,
    Method,
    Param,
    all_params,
    create_method,
    method_class,
    method_names,
    register_method,
)

# Import order is registration order: the CLI and the dashboard list lilnetx first.
# isort: off
from .lilnetx import LilNetX
from .dense import Dense
from .quant import Quant
from .imp import IMP
# isort: on

__all__ = ["IMP", "METHODS", "Dense", "LilNetX", "Method", "Param", "Quant", "all_params",
           "create_method", "method_class", "method_names", "register_method"]
