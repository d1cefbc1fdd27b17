"""Moved to ftray/checks.py. Kept only for ftray/driver/tracking.py, which imports `is_number` from here
(drop this module once it imports ftray.checks)."""

from ftray.checks import is_number  # noqa: F401
