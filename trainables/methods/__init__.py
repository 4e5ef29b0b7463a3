"""Unlearning methods, one file each, registered by name (SPEC section 5).

`available()` lists them; `create(name, dataset, **hparams)` builds one with the
paper's defaults for that data set; `original` and `retrain` are the reference rows.
Each method's hyper-parameters are declared once, as its `Params` dataclass.
"""

from . import (advanced_neggrad, bad_teaching, cf_k, eu_k, finetune, gli, l1_sparse, neggrad,  # noqa: F401  (registers)
               random_labels, salun, scrub, ssd, unsir)
from .interface import (REFERENCE_ROWS, REGISTRY, Context, Method, available, create, get, register, resolve,
                        resolved_hparams)
from .params import HyperParameterError, MethodParams

__all__ = ["REFERENCE_ROWS", "REGISTRY", "Context", "HyperParameterError", "Method", "MethodParams", "available",
           "create", "get", "register", "resolve", "resolved_hparams"]
