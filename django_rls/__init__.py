"""Database-enforced row-level security for Django, backed by the django_rls PostgreSQL extension."""

from __future__ import annotations

__version__ = "0.1.0"
