"""Hyper-parameter declarations: one frozen dataclass per method, each field declared once.

A field carries its default, its rule (checked on construction), the defaults that
differ per data set, and its search range for the study. The registry, the
validation, the study's search space and paper point, the MLflow params and the
export all read these declarations, so nothing about a hyper-parameter is written twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable


class HyperParameterError(ValueError):
    """An invalid hyper-parameter: one line naming the method, the value and the rule."""


@dataclass(frozen=True)
class Rule:
    test: Callable[[Any], bool]
    text: str  # what the value must be: "must be positive"


@dataclass(frozen=True)
class Search:
    """The range the study searches. Fields sharing `key` share one pair of bounds in the
    study's configuration; `at_least` names a field whose value is this one's lower bound."""

    kind: str  # "log", "int" or "float"
    low: float
    high: float
    key: str | None = None
    at_least: str | None = None


def _whole(value: Any) -> bool:
    try:
        return int(value) == value
    except (TypeError, ValueError, OverflowError):
        return False


def _passes(rule: Rule, value: Any) -> bool:
    """Whether `value` keeps `rule`; a value the rule cannot compare (text where a number belongs: YAML reads
    `1e8` as text) does not."""
    try:
        return bool(rule.test(value))
    except (TypeError, ValueError):
        return False


POSITIVE = Rule(lambda v: v > 0, "must be positive")
NON_NEGATIVE = Rule(lambda v: v >= 0, "must be non-negative")
UNIT = Rule(lambda v: 0 <= v < 1, "must be in [0, 1)")


def whole(low: int, high: int | None = None) -> Rule:
    if high is None:
        return Rule(lambda v: _whole(v) and v >= low, f"must be a whole number >= {low}")
    return Rule(lambda v: _whole(v) and low <= v <= high, f"must be between {low} and {high}")


def declare(default: Any, rule: Rule | None = None, search: Search | None = None, label: str | None = None,
       per_dataset: dict[str, Any] | None = None) -> Any:
    """A declared hyper-parameter: `label` names it in error messages (default: its name)."""
    return field(default=default, metadata={"rule": rule, "search": search, "label": label,
                                            "per_dataset": per_dataset or {}})


def default(parent: type, name: str, value: Any, searched: bool = True) -> Any:
    """`parent`'s field `name` (its rule, range and label) with another default, for a subclass;
    `searched=False` keeps the field out of the study's search."""
    metadata = dict({f.name: f for f in dataclasses.fields(parent)}[name].metadata)
    if not searched:
        metadata["search"] = None
    return field(default=value, metadata=metadata)


@dataclass(frozen=True)
class MethodParams:
    """The hyper-parameters every method has (SPEC section 5: SGD, momentum 0, batch 64)."""

    lr: float = declare(0.001, POSITIVE, Search("log", 1e-4, 1e-1), label="learning rate")
    epochs: int = declare(2, whole(1))
    batch_size: int = declare(64, whole(1), label="batch size")
    momentum: float = declare(0.0, UNIT)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, rule = getattr(self, f.name), f.metadata.get("rule")
            if rule is not None and not _passes(rule, value):
                raise HyperParameterError(f"{f.metadata.get('label') or f.name} {rule.text}, got {value!r}")
            if f.type in (int, "int"):
                object.__setattr__(self, f.name, int(value))  # 2.0 from JSON or YAML is the whole number 2
        self.check()

    def check(self) -> None:
        """Rules between fields (a subclass adds its own)."""

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def defaults(cls, dataset: str | None) -> dict[str, Any]:
        """Every field's default for `dataset` (the paper's settings differ by data set)."""
        return {f.name: f.metadata["per_dataset"].get(dataset, f.default) for f in dataclasses.fields(cls)}

    @classmethod
    def searched(cls) -> dict[str, Search]:
        """The fields the study searches, in declaration order."""
        return {f.name: f.metadata["search"] for f in dataclasses.fields(cls) if f.metadata.get("search")}

    @classmethod
    def bounds(cls) -> dict[str, list[float]]:
        """The declared search bounds by key (fields sharing a key appear once)."""
        return {s.key or name: [s.low, s.high] for name, s in cls.searched().items()}

    @classmethod
    def check_bounds(cls, bounds: dict[str, Any]) -> None:
        """Refuse bounds that are not [low, high] or that the fields' own rules refuse."""
        declared = cls.bounds()
        if set(bounds) != set(declared):
            raise HyperParameterError(f"search bounds need exactly the keys {sorted(declared)}, got {sorted(bounds)}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, s in cls.searched().items():
            key = s.key or name
            pair = bounds[key]
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise HyperParameterError(f"{key} must be [low, high], got {pair!r}")
            low, high = pair
            if not low <= high:
                raise HyperParameterError(f"{key}: low {low} is above high {high}")
            rule, label = fields[name].metadata["rule"], fields[name].metadata["label"] or name
            if rule is not None and not (rule.test(low) and rule.test(high)):
                raise HyperParameterError(f"{key}: {label} {rule.text}, got [{low}, {high}]")
            if s.kind == "log" and low <= 0:
                raise HyperParameterError(f"{key}: searched on a log scale, so the bounds must be > 0, got low {low}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class OptmlParams(MethodParams):
    """The OPTML group's unlearning runs (SalUn, Random Labels, l1-sparse; methods-2026.md sections 1-3): one SGD
    for the whole run, momentum 0.9, weight decay 5e-4, batch 256, 10 epochs (their `arg_parser.py` defaults;
    the step schedule at epochs 91 and 136 never acts in 10 epochs). The learning rate is searched in
    [1e-4, 1e-1], the range the same group states for its own searches."""

    lr: float = default(MethodParams, "lr", 0.01)
    epochs: int = default(MethodParams, "epochs", 10)
    batch_size: int = default(MethodParams, "batch_size", 256)
    momentum: float = default(MethodParams, "momentum", 0.9)
    weight_decay: float = declare(5e-4, NON_NEGATIVE, label="weight decay")
