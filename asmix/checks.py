"""Checks of user-given numbers, and the text forms they arrive in (``8/255``, ``Linf``)."""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

from asmix.errors import AsmixError

Norm = Literal["linf", "l2"]
"""Threat models, in asmix's spelling."""
NORMS: tuple[Norm, ...] = get_args(Norm)

THREAT_MODEL_NAMES = {"linf": "Linf", "l2": "L2"}
"""The same threat models as RobustBench and the AutoAttack package spell them."""


def threat_model_name(norm: str) -> str:
    """``linf`` -> ``Linf``, ``l2`` -> ``L2`` (RobustBench's and AutoAttack's spelling), any case accepted."""
    return THREAT_MODEL_NAMES[check_norm(norm)]


def check_finite(value: float, name: str) -> float:
    """``value`` as a float, refused when NaN or infinite (a radius, step, scale or sigma)."""
    value = float(value)
    if not math.isfinite(value):
        raise AsmixError(f"{name} must be a finite number, got {value}")
    return value


def check_finite_tensors(tensors: Any, source: str | None = None) -> None:
    """Refuse NaN or infinite values in the float tensors of ``tensors`` (name -> tensor), naming the first bad one
    (and ``source``): one such weight turns every output into NaN, and accuracies near chance would be reported."""
    import torch

    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and (tensor.is_floating_point() or tensor.is_complex()):
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                where = f"{source}: " if source else ""
                raise AsmixError(f"{where}tensor {name} has {bad} NaN or infinite values (of {tensor.numel()})")


def schema_problem(error: Any, model: Any = None) -> str:
    """The first problem of a pydantic ``ValidationError`` in one line: where (``architecture.width``), what was
    expected (the field's ``description`` in ``model`` where it has one, else pydantic's words) and what was found."""
    first = error.errors(include_url=False)[0]
    where = ".".join(map(str, first["loc"])) or "the document"
    found = repr(first.get("input"))
    found = found if len(found) <= 60 else found[:57] + "..."
    expected, annotation = None, model
    for key in first["loc"]:
        fields = getattr(annotation, "model_fields", {})
        if key not in fields:
            expected = None
            break
        expected, annotation = fields[key].description, fields[key].annotation
    if expected:
        return f"{where} must be {expected}, got {found}"
    message = first["msg"][:1].lower() + first["msg"][1:]
    return f"{where}: {message}, got {found}"


def parse_number(text: str, name: str = "value") -> float:
    """``0.5``, ``8/255`` or ``1e-3`` as a float (a fraction is how radii are usually written)."""
    text = str(text).strip()
    numerator, slash, denominator = text.partition("/")
    try:
        return float(numerator) / float(denominator) if slash else float(text)
    except (ValueError, ZeroDivisionError) as error:
        raise AsmixError(f"{name} must be a number or a fraction like 8/255, got {text!r}") from error


def canonical_norm(text: str) -> str:
    """A norm name in asmix's spelling: ``Linf``/``L2`` (RobustBench's) and any other case are lower-cased."""
    return str(text).strip().lower()


def check_norm(text: str) -> Norm:
    """``text`` as one of ``NORMS``, in any case."""
    return check_choice(canonical_norm(text), Norm, "norm", shown=text)


def check_choice(value: Any, choices: Any, name: str, *, shown: Any = None) -> Any:
    """``value`` if it is one of ``choices`` (a ``Literal`` type, or its values), else an error naming them."""
    allowed = get_args(choices) or tuple(choices)
    if value not in allowed:
        raise AsmixError(
            f"{name} must be one of {', '.join(map(str, allowed))}, got {value if shown is None else shown!r}"
        )
    return value


def check_choices(values: Any, choices: Any, name: str) -> tuple:
    """Each of ``values`` one of ``choices`` (a ``Literal`` type), as a tuple; the unknown ones named together."""
    allowed = get_args(choices)
    unknown = [value for value in values if value not in allowed]
    if unknown:
        raise AsmixError(f"unknown {name}(s) {', '.join(map(str, unknown))}: choose from {', '.join(allowed)}")
    return tuple(values)
