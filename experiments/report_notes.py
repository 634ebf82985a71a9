"""Keeps the hand-written part of a generated experiment report.

Table scripts rewrite their Markdown report from the run results; the reading of the numbers
lives under a ``## Notes`` heading that a person writes. ``kept_notes(path)`` returns that
section of the existing report (or nothing), so a regenerated report keeps it.
"""

import os


def kept_notes(path: str) -> list[str]:
    """Lines of the ``## Notes`` section of the report at ``path``, heading included."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        text = f.read()
    i = text.find("\n## Notes")
    return text[i:].strip("\n").split("\n") if i >= 0 else []
