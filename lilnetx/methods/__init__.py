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
from .dense import Dense
from .imp import IMP
from .lilnetx import LilNetX  # noqa: I001  (registration order: lilnetx first)
from .quant import Quant

__all__ = ["IMP", "METHODS", "Dense", "LilNetX", "Method", "Param", "Quant", "all_params",
           "create_method", "method_class", "method_names", "register_method"]
