"""Caller authentication and authorisation: who may call, and what they may do."""

from authsvc.access.callers import Caller, CallerConfigError, CallerSet
from authsvc.access.gate import Gate
from authsvc.access.scopes import Scope

__all__ = ["Caller", "CallerConfigError", "CallerSet", "Gate", "Scope"]
