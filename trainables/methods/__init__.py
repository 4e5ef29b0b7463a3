"""Unlearning methods, one file each, registered by name (SPEC section 5).

`available()` lists them; `create(name, dataset, **hparams)` builds one with the
paper's defaults for that data set; `original` and `retrain` are the reference rows.
"""

from . import advanced_neggrad, bad_teaching, cf_k, eu_k, finetune, gli, neggrad, scrub, unsir  # noqa: F401  (registers)
from .base import (REFERENCE_ROWS, REGISTRY, Context, HyperParameterError, Method, available, create, get, register,
                   resolved_hparams)

__all__ = ["REFERENCE_ROWS", "REGISTRY", "Context", "HyperParameterError", "Method", "available", "create", "get", "register",
           "resolved_hparams"]
