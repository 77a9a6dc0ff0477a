"""A figure measured against a target: one rule for whether it is met, and one way to show it.

A figure is shown with its verdict beside it, and with as many digits as it takes for the
printed figure to fall on the same side of the bound as the measured one: 0.699 against a
bar of 0.7 prints as 0.699 and "not met", never as a rounded-up 0.70.
"""

from __future__ import annotations

OPS = (">=", "<=")


def meets(op: str, bound: float, value: float) -> bool:
    """True when ``value`` meets ``op bound`` (``op`` is ">=" or "<=")."""
    if op not in OPS:
        raise ValueError(f"a target's operator is one of {OPS}, not {op!r}")
    return value >= bound if op == ">=" else value <= bound


def figure(value: float, op: str, bound: float, fmt: str = ".2f") -> str:
    """``value`` formatted by ``fmt`` (".2f", ".3g": a precision and f or g), with more
    digits where fewer would put the printed figure on the other side of the bound than the
    measured value is (up to 9)."""
    precision, kind = int(fmt[1:-1]), fmt[-1]
    ok = meets(op, bound, value)
    for d in range(precision, 10):
        text = f"{value:.{d}{kind}}"
        if meets(op, bound, float(text)) == ok:
            return text
    return repr(value)


def verdict(op: str, bound: float, value: float) -> str:
    """"met" or "not met"."""
    return "met" if meets(op, bound, value) else "not met"


def shown(value: float | None, op: str, bound: float, fmt: str = ".2f") -> str:
    """The figure, the target and the verdict in one phrase: "0.699 (target >= 0.7: not
    met)"; a figure not measured yet says so."""
    if value is None:
        return f"not measured yet (target {op} {bound:g})"
    return (f"{figure(value, op, bound, fmt)} (target {op} {bound:g}: "
            f"{verdict(op, bound, value)})")
