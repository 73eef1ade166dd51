"""Validity rules of a chapter's knobs: inferred from the presets' values, explicit where needed.

A chapter's presets already say what a knob is: ``epochs`` is 2, 15 or 100, so it is a
positive integer; ``dataset`` is ``"digits"`` or ``"mnist"``, so it is one of those;
``hidden`` is ``[16]`` or ``[512, 256]``, so it is a non-empty list of positive integers.
:func:`infer_rule` reads that off the values of every preset:

=====================================  ==================================================
values in the presets                  inferred rule
=====================================  ==================================================
bools                                  ``True`` or ``False``
integers, all >= 1 (>= 0)              an integer >= 1 (>= 0)
numbers, all > 0 (>= 0)                a number > 0 (>= 0)
strings                                one of the strings the presets use
lists (all non-empty)                  a (non-empty) list whose elements follow the rule
                                       inferred from every preset's elements
``None`` in some presets               ``None`` is also accepted
only ``None``, dicts, mixed types      no rule beyond the type check of ``setup``
=====================================  ==================================================

Explicit rules (:func:`parse_rule`) replace the inferred condition where inference cannot
know it; for a list knob they apply to each element. They are short strings:

* ``">= 4"``, ``"> 0"``, ``"<= 0.5"``, ``"< 1"``: a bound;
* ``"in [0, 1)"``, ``"in (0, 0.5]"``: an interval;
* ``"one of digits, mnist, cifar10"``: a choice (wider or narrower than the presets' own);
* ``"matches (digits|mnist)/(mlp|lenet)"``: a regular expression the whole string matches;
* ``"any"``: no condition;

optionally as ``(rule, reason)``, whose reason is added to the error message, or, where no
string says it, a ``(predicate, description)`` pair replacing the inferred rule entirely.
A failed rule raises ``ValueError("<knob> must be <description>, got <value>")``.

*Relations* between knobs are ``(predicate, message)`` pairs whose predicate's argument
names are knobs (``lambda n_features, num_points: n_features > num_points``); the message is
formatted with the knobs' values.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Rule", "infer_rule", "parse_rule", "rules_for", "check_knobs", "check_relations"]


@dataclass(frozen=True)
class Rule:
    """A condition on one knob's value: ``test(value) -> bool`` and what it asks for.

    ``description`` completes "<knob> must be ...", e.g. "a non-empty list of integers >= 1".
    """

    test: Callable[[Any], bool]
    description: str

    def __call__(self, value: Any) -> bool:
        return bool(self.test(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


# (test, singular noun, plural noun) of the element kinds inference and rules know.
_KINDS = {
    "bool": (lambda v: isinstance(v, bool), "True or False", "bools"),
    "int": (_is_int, "an integer", "integers"),
    "number": (_is_number, "a number", "numbers"),
    "str": (lambda v: isinstance(v, str), "a string", "strings"),
}


def _kind(values: Sequence[Any]) -> str | None:
    """The element kind every value shares ("bool", "int", "number", "str"), else None."""
    for kind in _KINDS:
        if values and all(_KINDS[kind][0](v) for v in values):
            return kind
    return None


def _bound(values: Sequence[Any], kind: str) -> str | None:
    """The range the presets' numbers keep: ">= 1" or ">= 0" for integers, "> 0" or ">= 0"
    for numbers, None where some value is negative."""
    low = min(values)
    if kind == "int" and low >= 1:
        return ">= 1"
    if kind == "number" and low > 0:
        return "> 0"
    return ">= 0" if low >= 0 else None


def _condition(kind: str, spec: str | None, values: Sequence[Any]) -> tuple[Callable, str] | None:
    """(test, text) of the condition on one element, from ``spec`` or inferred from ``values``."""
    if spec is None:
        if kind == "str":
            choices = list(dict.fromkeys(values))
            return _choice(choices)
        if kind in ("int", "number"):
            bound = _bound(values, kind)
            return _compare(bound) if bound else None
        return None
    spec = spec.strip()
    if spec == "any":
        return None
    for prefix, make in (("one of ", lambda rest: _choice([c.strip() for c in rest.split(",")])),
                         ("matches ", _pattern), ("in ", _interval)):
        if spec.startswith(prefix):
            return make(spec[len(prefix):].strip())
    return _compare(spec)


def _choice(choices: list[str]) -> tuple[Callable, str]:
    return (lambda v: v in choices), "one of " + ", ".join(repr(c) for c in choices)


def _pattern(regex: str) -> tuple[Callable, str]:
    compiled = re.compile(regex)
    return (lambda v: isinstance(v, str) and compiled.fullmatch(v) is not None), f"matching {regex}"


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_OPERATORS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b,
              "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}


def _compare(spec: str) -> tuple[Callable, str]:
    match = re.fullmatch(rf"(>=|>|<=|<)\s*({_NUMBER})", spec)
    if match is None:
        raise ValueError(f"rule {spec!r} is not one of '>= x', '> x', '<= x', '< x', 'in [a, b)', "
                         "'one of a, b', 'matches REGEX' or 'any'")
    operator, limit = _OPERATORS[match.group(1)], float(match.group(2))
    return (lambda v: operator(v, limit)), f"{match.group(1)} {match.group(2)}"


def _interval(spec: str) -> tuple[Callable, str]:
    match = re.fullmatch(rf"([\[(])\s*({_NUMBER})\s*,\s*({_NUMBER})\s*([\])])", spec)
    if match is None:
        raise ValueError(f"interval rule 'in {spec}' must read like 'in [0, 1)' or 'in (0, 0.5]'")
    low = _OPERATORS[">=" if match.group(1) == "[" else ">"]
    high = _OPERATORS["<=" if match.group(4) == "]" else "<"]
    a, b = float(match.group(2)), float(match.group(3))
    return (lambda v: low(v, a) and high(v, b)), f"in {spec}"


def _make(values: Sequence[Any], spec: str | None) -> Rule | None:
    """The rule of a knob whose presets hold ``values`` (None ones dropped by the caller)."""
    if all(_is_list(v) for v in values):
        elements = [e for v in values for e in v]
        kind = _kind(elements)
        condition = _condition(kind, spec, elements) if kind else None
        if kind is None and spec is not None and spec.strip() != "any":
            raise ValueError(f"rule {spec!r} needs list elements of one kind, the presets mix them")
        non_empty = all(len(v) > 0 for v in values)
        return _list_rule(kind, condition, non_empty)
    kind = _kind(values)
    if kind is None:
        if spec is not None and spec.strip() != "any":
            raise ValueError(f"rule {spec!r} needs preset values of one kind (numbers, strings, ...)")
        return None
    condition = _condition(kind, spec, values)
    if kind == "bool" or condition is None:
        test, noun = _KINDS[kind][0], _KINDS[kind][1]
        return Rule(test, noun)
    test, text = condition
    element_test = _KINDS[kind][0]
    noun = "" if kind == "str" else _KINDS[kind][1] + " "
    return Rule(lambda v: element_test(v) and test(v), f"{noun}{text}")


def _list_rule(kind: str | None, condition, non_empty: bool) -> Rule:
    element_test = _KINDS[kind][0] if kind else (lambda e: True)
    condition_test, text = condition if condition else ((lambda e: True), "")
    head = "a non-empty list" if non_empty else "a list"
    if text.startswith("one of "):
        description = f"{head} drawn from {text.removeprefix('one of ')}"
    else:
        description = " ".join(filter(None, [head, "of", _KINDS[kind][2] if kind else "values", text]))

    def test(value: Any) -> bool:
        return (_is_list(value) and (len(value) > 0 or not non_empty)
                and all(element_test(e) and condition_test(e) for e in value))

    return Rule(test, description)


def _with_none(rule: Rule | None) -> Rule | None:
    if rule is None:
        return None
    return Rule(lambda v: v is None or rule(v), f"None or {rule.description}")


def infer_rule(values: Iterable[Any], spec: Any = None) -> Rule | None:
    """The rule of one knob from its value in every preset (and an explicit ``spec``).

    Args:
        values: the knob's value in each preset.
        spec: None (infer everything), a rule string (see the module docstring), a
            ``(rule string, reason)`` pair, or a ``(predicate, description)`` pair that
            replaces inference.

    Returns:
        The :class:`Rule`, or None where nothing is checked beyond the type.
    """
    reason = None
    if isinstance(spec, tuple):
        if len(spec) == 2 and callable(spec[0]) and isinstance(spec[1], str):
            return Rule(spec[0], spec[1])
        if len(spec) == 2 and all(isinstance(part, str) for part in spec):
            spec, reason = spec
        else:
            raise TypeError(f"a rule must be a string, a (rule, reason) pair or a (predicate, "
                            f"description) pair, got {spec!r}")
    elif spec is not None and not isinstance(spec, str):
        raise TypeError(f"a rule must be a string, a (rule, reason) pair or a (predicate, "
                        f"description) pair, got {type(spec).__name__}")
    values = list(values)
    given = [v for v in values if v is not None]
    rule = _make(given, spec) if given else None
    if rule is not None and len(given) < len(values):
        rule = _with_none(rule)
    if rule is not None and reason:
        rule = Rule(rule.test, f"{rule.description} ({reason})")
    return rule


def parse_rule(spec: Any, values: Iterable[Any]) -> Rule | None:
    """An explicit rule ``spec`` for a knob whose presets hold ``values``; see :func:`infer_rule`."""
    return infer_rule(values, spec)


def rules_for(presets: Mapping[str, Mapping[str, Any]],
              explicit: Mapping[str, Any] | None = None) -> dict[str, Rule]:
    """The rule of every knob of ``presets``: explicit where ``explicit`` names it, else inferred.

    Raises:
        ValueError: ``explicit`` names a knob no preset has, or a rule string is malformed.
        TypeError: a rule is neither a string nor a pair.
    """
    explicit = dict(explicit or {})
    names = list(dict.fromkeys(name for knobs in presets.values() for name in knobs))
    for name in explicit:
        if name not in names:
            raise ValueError(f"rule given for unknown knob {name!r}; known knobs: {', '.join(names)}")
    rules = {}
    for name in names:
        try:
            rule = infer_rule([knobs[name] for knobs in presets.values() if name in knobs],
                              explicit.get(name))
        except (TypeError, ValueError) as error:
            raise type(error)(f"rule of knob {name!r}: {error}") from None
        if rule is not None:
            rules[name] = rule
    return rules


def check_knobs(values: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """ValueError ``"<knob> must be <description>, got <value>"`` for the first knob of
    ``values`` that breaks its rule."""
    for name, rule in rules.items():
        if name in values and not rule(values[name]):
            raise ValueError(f"{name} must be {rule.description}, got {values[name]!r}")


def check_relations(values: Mapping[str, Any],
                    relations: Iterable[tuple[Callable[..., bool], str]]) -> None:
    """ValueError with the formatted message of the first relation that fails.

    Each relation is ``(predicate, message)``; the predicate's parameters are knob names and
    receive those knobs' values, the message is formatted with every knob's value.
    """
    for relation in relations:
        if not (isinstance(relation, tuple) and len(relation) == 2 and callable(relation[0])
                and isinstance(relation[1], str)):
            raise TypeError(f"a relation must be a (predicate, message) pair, got {relation!r}")
        predicate, message = relation
        names = list(inspect.signature(predicate).parameters)
        missing = [name for name in names if name not in values]
        if missing:
            raise ValueError(f"relation {message!r} names unknown knobs {missing}")
        if not predicate(**{name: values[name] for name in names}):
            raise ValueError(message.format(**values))
