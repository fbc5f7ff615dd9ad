"""One escape for every value that reaches a terminal or the journal.

Values geod did not write itself (an mmdb's `database_type`, the app's stored country codes, a
path from the config) may hold control characters: a CR or NUL splits a journal record (and can
forge a `<0>` priority line), an ESC drives the terminal. `escape` turns every such character into
a visible backslash escape; backslash itself is doubled, so the escaped text maps back to exactly
one original (`unescape`). Printable text, including non-ASCII letters, passes unchanged.
"""

from __future__ import annotations

import re
import unicodedata

# Control characters (C0, DEL, C1) and the other characters that end a line or reorder text in a
# terminal: Unicode line/paragraph separators and the bidirectional overrides and isolates.
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
_SEPARATORS = "\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"
_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f-\x9f" + _SEPARATORS + "]")
_ESCAPED = re.compile(r"\\(\\|n|r|t|x[0-9a-f]{2}|u[0-9a-f]{4})")


def _one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with every control, line-ending or bidi character written as a backslash escape."""
    if _UNSAFE.search(text) is None:
        return text  # the common case: nothing to do, no copy
    return _UNSAFE.sub(_one, text)


def unescape(text: str) -> str:
    """The inverse of `escape` (for tests and for readers of geod's output)."""
    reverse = {value: key for key, value in _NAMED.items()}

    def back(match: re.Match[str]) -> str:
        token = match.group()
        if token in reverse:
            return reverse[token]
        return chr(int(token[2:], 16))

    return _ESCAPED.sub(back, text)


def is_safe(text: str) -> bool:
    """True when `text` holds nothing `escape` would change except backslashes."""
    return not any(
        unicodedata.category(char) == "Cc" or char in _SEPARATORS for char in text
    )
