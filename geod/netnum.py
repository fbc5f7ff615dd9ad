"""One rule for every number geod reads from outside: the network, a config string, the environment.

ASCII digits only (`str.isdigit()` also accepts "²" and "١", which `int()` then rejects or
reads), at most a few characters, and within what the value can mean; anything else is None,
never an exception. Callers decide what an absent value means (for rate headers: the
conservative path), so an implausible value can never buy a long wait or a long loop.
"""

from __future__ import annotations

# The most digits any value geod reads can need; also bounds the cost of int() on hostile text.
MAX_DIGITS = 20  # 2**64 - 1 (an inode number) has 20


def parse_count(text: str | None, high: int, low: int = 0) -> int | None:
    """`text` as a whole number in low..high, or None when it is anything else.

    Surrounding blanks (HTTP allows them around a header value) are ignored; signs, decimal
    points, non-ASCII digits and values out of range are not numbers here.
    """
    if text is None:
        return None
    text = text.strip(" \t")
    if not text or len(text) > MAX_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if low <= value <= high else None
