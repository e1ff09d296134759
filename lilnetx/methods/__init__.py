"""Compression methods, one per module, registered by name: ``lilnetx`` (the paper's method),
``dense``, ``quant`` and ``imp`` (baselines), and any installed through the
``lilnetx.methods`` entry-point group. See :mod:`lilnetx.methods.base` for the protocol."""

from lilnetx.methods.base import (
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
from lilnetx.methods.lilnetx import LilNetX
from lilnetx.methods.dense import Dense
from lilnetx.methods.quant import Quant
from lilnetx.methods.imp import IMP
# isort: on

__all__ = ["IMP", "METHODS", "Dense", "LilNetX", "Method", "Param", "Quant", "all_params",
           "create_method", "method_class", "method_names", "register_method"]
