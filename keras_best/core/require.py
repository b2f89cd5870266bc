"""The `require` constraints: parse them, check an epoch's metrics, say them in words.

`require` is a dict `{name: (op, threshold)}` or a callable taking the metrics
dict and returning a bool (see `keras_best.core.objective.Objective`). Plain
Python: no TensorFlow, no I/O.

>>> rules = parse({"val_recall": (">=", 0.9)})
>>> rules, feasible(rules, {"val_recall": 0.95}), feasible(rules, {})
((('val_recall', '>=', 0.9),), True, False)
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Callable, Mapping

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}


def parse(require: Any) -> Any:
    """`None`, the callable as given, or `((name, op, threshold), ...)`; raise `ValueError` otherwise."""
    if require is None or callable(require):
        return require
    if not isinstance(require, Mapping) or not require:
        raise ValueError(
            "`require` must be a dict like {'val_recall': ('>=', 0.9)} or a callable taking "
            f"the metrics dict and returning a bool. Received: require={require!r}"
        )
    parsed = []
    for name, rule in require.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"`require` keys must be metric names. Received: {name!r}")
        if not isinstance(rule, (tuple, list)) or len(rule) != 2:
            raise ValueError(
                f"`require[{name!r}]` must be an (op, threshold) pair such as ('>=', 0.9). "
                f"Received: {rule!r}"
            )
        op, threshold = rule
        if op not in OPS:
            raise ValueError(
                f"Unknown constraint op {op!r} in require[{name!r}]; use one of "
                f"{', '.join(OPS)}. Received: require={{{name!r}: {tuple(rule)!r}}}"
            )
        if not is_real(threshold) or math.isnan(threshold):
            raise ValueError(
                f"The threshold of require[{name!r}] must be a number. Received: {threshold!r}"
            )
        parsed.append((name, op, float(threshold)))
    return tuple(parsed)


def feasible(require: Any, values: Mapping[str, float]) -> bool:
    """Does `values` meet the parsed `require`? (a NaN or absent metric does not)."""
    if require is None:
        return True
    if callable(require):
        return _call_bool(require, values)
    return all(OPS[op](float(values.get(name, math.nan)), threshold) for name, op, threshold in require)


def check_keys(require: Any, values: Mapping[str, float]) -> None:
    """Raise `ValueError` for a metric the parsed `require` names and `values` lacks."""
    if require is None or callable(require):
        return
    for name, op, threshold in require:
        if name not in values:
            raise ValueError(
                f"The constraint require={{{name!r}: ({op!r}, {threshold!r})}} names "
                f"the metric {name!r}, which is not among the metrics given to update(): "
                f"{sorted(values)}. Pass it to update() (in fit(): compile it as a metric "
                "and give validation data), or fix the name."
            )


def spec(require: Any) -> Any:
    """JSON form of the parsed `require`: `{name: [op, threshold]}`, a callable's name, or None."""
    if require is None:
        return None
    if callable(require):
        return callable_name(require, "require")
    return {name: [op, threshold] for name, op, threshold in require}


def describe_require(spec: Any) -> str:
    """`require` in words, from its JSON form (`Objective.require_spec`, or as
    read from keras_best.json: untrusted, so anything else is shown as it is).

    >>> describe_require({"val_recall": [">=", 0.9]}), describe_require("recall_ok")
    ('val_recall >= 0.9', 'require=recall_ok')
    """
    if spec is None:
        return ""
    if isinstance(spec, str):
        return f"require={spec}"
    try:
        return ", ".join(f"{n} {op} {t:g}" for n, (op, t) in spec.items())
    except (AttributeError, TypeError, ValueError):
        return f"require={spec!r}"


def callable_name(fn: Any, default: str = "score") -> str:
    """`fn.__name__`, or `default` for a lambda or a nameless callable."""
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) and name and name != "<lambda>" else default


def is_real(x: Any) -> bool:
    """A real number, not a bool (numpy numbers accepted, numpy bools not)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and type(x).__name__ != "bool_"


def call(fn: Callable[[Mapping[str, float]], Any], what: str, values: Mapping[str, float]) -> Any:
    """`fn(dict(values))`; a `KeyError` becomes a `ValueError` naming the metric it read."""
    try:
        return fn(dict(values))
    except KeyError as e:
        key = e.args[0] if e.args else None
        raise ValueError(
            f"{what} read the metric {key!r}, which is not among the metrics given to "
            f"update(): {sorted(values)}."
        ) from e


def _call_bool(fn: Callable[[Mapping[str, float]], Any], values: Mapping[str, float]) -> bool:
    name = callable_name(fn, "require")
    result = call(fn, f"The constraint `{name}` (require=)", values)
    if isinstance(result, bool) or type(result).__name__ == "bool_":
        return bool(result)
    raise ValueError(
        f"The constraint `{name}` (require=) must return True or False; it returned "
        f"{result!r} ({type(result).__name__}) for the metrics {dict(values)!r}."
    )
