"""JSON read from files anyone can write (run folders, caches, data files): one too deeply nested is a ValueError.

json raises RecursionError on arrays or objects nested a few thousand deep (a 200 kB line), which every reader
here let through as a traceback, where a damaged file is a one-line error or a skipped row.
"""

from __future__ import annotations

import json
from typing import Any


def loads(text: str | bytes, **kwargs: Any) -> Any:
    """`json.loads`; ValueError, not RecursionError, for nesting deeper than the interpreter's recursion limit."""
    try:
        return json.loads(text, **kwargs)
    except RecursionError:
        raise ValueError("arrays or objects nested too deeply") from None
