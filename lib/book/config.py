"""Run settings for a chapter: presets, overrides, device and seeds.

A chapter's *presets* (a fast one for CI, the one this page shows, the one matching a
paper) are plain dictionaries of *knobs*, declared as data in :mod:`lib.book.presets`
(one module per chapter) or passed directly::

    PRESETS = {
        "fast":  {"epochs": 5,   "hidden": [32],  "lr": 0.1},
        "paper": {"epochs": 100, "hidden": [512], "lr": 0.05},
    }
    cfg = setup("fast", PRESETS, lr=0.2)
    cfg.epochs, cfg.lr, cfg.device, cfg.seed   # -> 5, 0.2, device('cpu'), 0
    cfg = setup("small", "curvature", knobs={"epochs": 3})   # a chapter's own presets

Overrides are checked against the presets so that a typo, a wrong type or a value out of
range fails loudly at the top of the notebook instead of silently later on: their types
and ranges are inferred from the presets' values (:mod:`lib.book.rules`), with explicit
rules only where inference cannot know them.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from .._checks import check_seed
from .rules import check_knobs, check_relations, rules_for

__all__ = ["Settings", "setup", "resolve_device", "seed_everything"]

RENAMED_KNOBS = {"mc_samples": "num_samples", "n_iter": "num_steps", "n_samples": "num_points",
                 "kfac_damping": "kfac_factor_damping"}
"""Old chapter knob names and their new names in the library's vocabulary; an old name is an error naming the new one."""

# Names that `setup` fills in itself, so a preset may not use them as knobs.
_RESERVED = ("preset", "device", "seed", "knobs", "checks", "relations")



class Settings:
    """Read-only bundle of resolved settings with attribute access.

    Attributes: ``preset`` (str), ``device`` (torch.device), ``seed`` (int)
    and one attribute per knob of the chosen preset.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # keeps copy/pickle probing from recursing
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            known = ", ".join(self._values)
            raise AttributeError(f"no setting {name!r}; known settings: {known}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        # Settings are resolved once at the top of a chapter; changing them
        # later would make the printed table lie about what ran.
        raise AttributeError("Settings are read-only; pass overrides to setup() instead")

    def __reduce__(self):
        return (Settings, (self._values,))

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self._values == other._values

    __hash__ = None  # mutable-looking contents (lists) make hashing unsafe

    def as_dict(self) -> dict[str, Any]:
        """Return a shallow copy of all settings as a plain ``dict``."""
        return dict(self._values)

    def table(self) -> str:
        """Return the settings as an aligned two-column text table."""
        width = max(len(name) for name in self._values)
        rows = [f"{name:<{width}}  {value}" for name, value in self._values.items()]
        return "\n".join(rows)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={value!r}" for name, value in self._values.items())
        return f"Settings({inner})"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's ``random``, numpy's and torch's global generators (CPU and CUDA).

    Args:
        seed: integer in ``[0, 2**32 - 1]``.

    Returns:
        A fresh CPU ``torch.Generator`` seeded with ``seed``, for code that
        prefers an explicit generator over global state.
    """
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a device request into an available ``torch.device``.

    Args:
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``, ``"mps"`` or a ``torch.device``.

    Returns:
        The ``torch.device``.

    Raises:
        TypeError: ``device`` is neither a str nor a torch.device.
        ValueError: the name is unknown or that device is not available here.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "mps":
        if not _mps_available():
            raise ValueError("device 'mps' requested but MPS is not available on this machine")
        return torch.device("mps")
    if device == "cuda" or device.startswith("cuda:"):
        return _resolve_cuda(device)
    raise ValueError(
        f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
    )


def _resolve_cuda(device: str) -> torch.device:
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if device == "cuda":
        return torch.device("cuda")
    index_text = device.split(":", 1)[1]
    if not index_text.isdigit():
        raise ValueError(f"bad CUDA device {device!r}; expected 'cuda:N' with N an integer")
    index = int(index_text)
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device {device!r} requested but only {count} CUDA device(s) exist")
    return torch.device("cuda", index)


def _coerce_knob(name: str, default: Any, value: Any) -> Any:
    """Return ``value`` converted to the type of the preset's ``default``.

    Rules: a knob whose preset value is None accepts anything; bool and int
    never stand in for each other; an int is accepted (and converted) for a
    float knob; list and tuple knobs accept either, converted to the preset's.
    """
    if default is None:
        return value
    expected = type(default)
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(default, bool) and isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float)):
        return float(value)
    elif isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return expected(value)
    elif isinstance(value, expected):
        return value
    raise TypeError(
        f"knob {name!r} expects {expected.__name__}, got {type(value).__name__} {value!r}"
    )


def _validate_presets(presets: Any) -> None:
    if not isinstance(presets, Mapping) or not presets:
        raise TypeError("presets must be a non-empty dict mapping preset names to dicts of knobs")
    for name, knobs in presets.items():
        if not isinstance(knobs, Mapping):
            raise TypeError(f"preset {name!r} must be a dict of knobs, got {type(knobs).__name__}")
        for knob in knobs:
            if not isinstance(knob, str) or not knob.isidentifier():
                raise ValueError(f"preset {name!r} has knob {knob!r}, which is not a valid name")
            if knob in _RESERVED:
                raise ValueError(
                    f"preset {name!r} uses the reserved name {knob!r} as a knob; "
                    f"pass it as setup(..., {knob}=...) instead"
                )


def _chapter_presets(presets: Any) -> tuple[Mapping, Mapping, list]:
    """(presets, rules, relations) of a chapter's name (from :mod:`lib.book.presets`)."""
    from . import presets as chapter_presets

    declared = chapter_presets.load(presets)
    return declared.presets, declared.rules, list(declared.relations)


def _merge_overrides(knobs: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    if knobs is None:
        return dict(overrides)
    if not isinstance(knobs, Mapping):
        raise TypeError(f"knobs must be a dict of knob values, e.g. {{'epochs': 3}}, "
                        f"got {type(knobs).__name__} {knobs!r}")
    both = sorted(set(knobs) & set(overrides))
    if both:
        raise ValueError(f"knobs {both} given both in knobs= and as keyword arguments")
    return {**knobs, **overrides}


def papermill_knobs(names: Iterable[str]) -> dict[str, Any]:
    """Knobs that plain papermill injected as their own parameters (``-p epochs 3``).

    Papermill writes its parameters into a cell whose source starts with ``# Parameters``
    and runs it after the parameters cell, so ``-p epochs 3`` defines a variable ``epochs``
    that the chapter never reads (the chapter reads ``knobs``). The running kernel's input
    history holds that cell, so the names it assigns are known exactly; a variable of the
    same name defined later in an interactive session is not mistaken for one.

    Args:
        names: the chapter's knob names.

    Returns:
        ``{name: value}`` of the injected variables among ``names``; ``{}`` outside IPython
        or when papermill injected none.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with every notebook kernel
        return {}
    shell = get_ipython()
    if shell is None:
        return {}
    names, namespace = set(names), shell.user_ns
    injected = [source for source in namespace.get("In", []) if source.startswith("# Parameters")]
    assigned = {target.id for source in injected for node in ast.parse(source).body
                if isinstance(node, ast.Assign) for target in node.targets if isinstance(target, ast.Name)}
    return {name: namespace[name] for name in sorted(assigned & names) if name in namespace}


def setup(
    preset: str,
    presets: str | Mapping[str, Mapping[str, Any]],
    *,
    device: str | torch.device = "auto",
    seed: int = 0,
    knobs: Mapping[str, Any] | None = None,
    checks: Mapping[str, Any] | None = None,
    relations: list[tuple[Callable[..., bool], str]] | None = None,
    **overrides: Any,
) -> Settings:
    """Resolve a preset plus overrides into validated settings and seed everything.

    Args:
        preset: name of the preset to use, a key of the presets.
        presets: ``{preset_name: {knob: default_value}}``, or a chapter's name
            (``"curvature"``), whose presets, rules and relations
            :func:`lib.book.presets.load` reads.
        device: see :func:`resolve_device`.
        seed: non-negative int; seeds ``random``, numpy and torch.
        knobs: ``{knob: value}`` overrides (a chapter's papermill parameter ``knobs``).
        checks: explicit rules ``{knob: rule}`` where inference from the presets' values
            cannot know them (see :mod:`lib.book.rules`): a string such as ``">= 4"``,
            ``"in [0, 1)"``, ``"one of a, b"``, ``"matches REGEX"``, ``"any"``; a
            ``(rule, reason)`` pair; or a ``(predicate, description)`` pair. Every other
            knob gets the rule inferred from its values in all presets.
        relations: ``[(predicate, message)]`` between knobs, see
            :func:`lib.book.rules.check_relations`.
        **overrides: knob values replacing the preset's, like ``knobs``; ``None`` keeps
            the preset's value (so papermill parameters can default to None).

    Returns:
        :class:`Settings` with ``preset``, ``device``, ``seed`` and every knob, in the
        preset's order.

    Raises:
        ValueError: unknown preset, unknown knob, a value breaking its rule or a
            relation, bad device or seed. The message names the knob.
        TypeError: an override of the wrong type, or malformed ``presets``, ``knobs`` or rules.
    """
    if isinstance(presets, str):
        if checks is not None or relations is not None:
            raise TypeError("checks and relations come with a chapter's presets; pass a dict of presets")
        presets, checks, relations = _chapter_presets(presets)
        injected = papermill_knobs(next(iter(presets.values())))
        if injected:  # `papermill -p epochs 3` works like `-p knobs "{epochs: 3}"`
            both = sorted(set(injected) & set(knobs if isinstance(knobs, Mapping) else {}))
            if both:
                raise ValueError(f"knobs {both} are given twice: as papermill parameters and in knobs")
            knobs = {**injected, **(knobs or {})}
    _validate_presets(presets)
    if not isinstance(preset, str) or preset not in presets:
        known = ", ".join(repr(name) for name in presets)
        raise ValueError(f"unknown preset {preset!r}; known presets: {known}")
    values = dict(presets[preset])
    for name, value in _merge_overrides(knobs, overrides).items():
        if name not in values:
            renamed = RENAMED_KNOBS.get(name)
            if renamed in values:
                raise ValueError(f"knob {name!r} is now called {renamed!r} (one word per concept: "
                                 "chapters/library.md)")
            raise ValueError(
                f"unknown knob {name!r} for preset {preset!r}; known knobs: {', '.join(values)}"
            )
        if value is not None:
            values[name] = _coerce_knob(name, values[name], value)
    check_knobs(values, rules_for(presets, checks))
    check_relations(values, relations or [])
    resolved_device = resolve_device(device)
    seed_everything(seed)
    return Settings({"preset": preset, "device": resolved_device, "seed": int(seed), **values})
