"""Cleanup: inactive streams, retention of recordings, and a disk-space guard."""

from .service import CleanupService

__all__ = ["CleanupService"]
