"""Search spaces for Optuna, read from each method's declaration (`trainables/methods/`).

A space is define-by-run, so that a range may start at another field's value (GLI's
w_end is drawn in [w_start, high]: the guidance weight only rises over the epoch). The
study's configuration may narrow the declared bounds (`gli_space`), key by key.
"""

from __future__ import annotations

from typing import Any

from trainables.methods import get, resolve


class SearchSpace:
    """A method's searched hyper-parameters, in declaration order (a class, not a closure: Tune pickles it)."""

    def __init__(self, method: str, bounds: dict[str, list[float]] | None = None):
        params = get(method).Params
        self.fields = params.searched()
        self.bounds = {**params.bounds(), **{k: list(v) for k, v in (bounds or {}).items()}}

    def __call__(self, trial) -> None:
        drawn: dict[str, Any] = {}
        for name, s in self.fields.items():
            low, high = self.bounds[s.key or name]
            if s.at_least:
                low = max(low, drawn[s.at_least])
            if s.kind == "int":
                drawn[name] = trial.suggest_int(name, int(low), int(high))
            else:
                drawn[name] = trial.suggest_float(name, low, high, log=s.kind == "log")

    def contains(self, point: dict[str, Any]) -> bool:
        for name, s in self.fields.items():
            low, high = self.bounds[s.key or name]
            if s.at_least:
                low = max(low, point[s.at_least])
            if not low <= point[name] <= high:
                return False
        return True


def paper_point(method: str, dataset: str, bounds: dict[str, list[float]] | None = None) -> dict | None:
    """The paper's setting of the searched keys, enqueued as the first trial; None if outside the bounds."""
    space = SearchSpace(method, bounds)
    defaults = resolve(method, dataset).as_dict()
    point = {name: defaults[name] for name in space.fields}
    return point if space.contains(point) else None
