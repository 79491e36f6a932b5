"""`i/N` slices of a list of work: `cxrfeat extract --part i/N` (row chunks of a store) and
`heads sweep --shard i/N` (cells of a grid).

Part i of N (1-based) is the i-th of N contiguous, near-equal ranges: items[(i-1)·len//N : i·len//N]
(empty when N > len). Each command keeps its own option name in its messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from cxrfeat.errors import UserError

T = TypeVar("T")


def parse_slice(spec: str, option: str, example: str) -> tuple[int, int]:
    """'i/N' -> (i, N) with 1 <= i <= N; `UserError` naming `option` (e.g. "--part") otherwise, with
    `example` (e.g. "2/4 (the second of 4 parts)") as the hint."""
    try:
        i, n = (int(p) for p in str(spec).split("/"))
    except ValueError:
        raise UserError(f"{option} {spec!r}: give i/N, e.g. {example}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise UserError(f"{option} {spec}: need 1 <= i <= N")
    return i, n


def slice_range(length: int, part: tuple[int, int]) -> range:
    """The indices of part i of N of `length` items (see the module docstring)."""
    i, n = part
    return range((i - 1) * length // n, i * length // n)


def take_slice(items: Sequence[T], part: tuple[int, int]) -> Sequence[T]:
    """Part i of N of `items` (see the module docstring)."""
    r = slice_range(len(items), part)
    return items[r.start:r.stop]
