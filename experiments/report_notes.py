"""Keeps the hand-written part of a generated experiment report.

Table scripts rewrite their Markdown report from the run results; the reading of the numbers
lives under a ``## Notes`` heading that a person writes. ``kept_notes(path)`` (shared with
``ssljax.benchmark``) returns that section of the existing report (or nothing).
"""

from ssljax.benchmark import kept_notes

__all__ = ["kept_notes"]
