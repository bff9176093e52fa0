"""Reading trio's exception groups: which leaf ended a connection's tasks."""

from __future__ import annotations


def leaves(exc: BaseException) -> list[BaseException]:
    """The non-group exceptions inside ``exc`` (``exc`` itself when it is not a group), in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def first_leaf(
    exc: BaseException, *kinds: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    """The first leaf of the first kind in ``kinds`` that has one (kinds in priority order)."""
    found = leaves(exc)
    for kind in kinds:
        for leaf in found:
            if isinstance(leaf, kind):
                return leaf
    return None
