"""Search spaces for Optuna: GLI's (step size, iteration count, guidance strength) and each baseline's.

Spaces are define-by-run functions so that GLI's w_end is drawn in [w_start, high]
(the guidance weight may only rise over the epoch). Baseline spaces come from the
`search_space` declared next to each method (`trainables/methods/<name>.py`).
"""

from __future__ import annotations

from trainables.methods import create, get


class gli_space:
    """GLI's define-by-run space (a class, not a closure: Tune pickles the searcher)."""

    def __init__(self, bounds: dict[str, list[float]]):
        self.bounds = {k: list(v) for k, v in bounds.items()}

    def __call__(self, trial) -> None:
        b = self.bounds
        trial.suggest_float("step_size", b["step_size"][0], b["step_size"][1], log=True)
        trial.suggest_int("iterations", int(b["iterations"][0]), int(b["iterations"][1]))
        w_start = trial.suggest_float("w_start", b["guidance"][0], b["guidance"][1], log=True)
        trial.suggest_float("w_end", w_start, b["guidance"][1], log=True)  # the weight only rises


class method_space:
    """A baseline's space, from the `search_space` declared in its method file."""

    def __init__(self, name: str):
        self.declared = dict(get(name).search_space)

    def __call__(self, trial) -> None:
        for key, (kind, low, high) in self.declared.items():
            if kind == "log":
                trial.suggest_float(key, low, high, log=True)
            elif kind == "int":
                trial.suggest_int(key, int(low), int(high))
            else:
                trial.suggest_float(key, low, high)


def paper_point(name: str, dataset: str, bounds: dict[str, list[float]] | None = None) -> dict | None:
    """The paper's setting of the searched keys, enqueued as the first trial; None if outside the bounds."""
    config = create(name, dataset).config()
    if name == "gli":
        point = {k: config[k] for k in ("step_size", "iterations", "w_start", "w_end")}
        if bounds:
            inside = (bounds["step_size"][0] <= point["step_size"] <= bounds["step_size"][1]
                      and bounds["iterations"][0] <= point["iterations"] <= bounds["iterations"][1]
                      and bounds["guidance"][0] <= point["w_start"] <= point["w_end"] <= bounds["guidance"][1])
            if not inside:
                return None
        return point
    return {k: config[k] for k in get(name).search_space}
