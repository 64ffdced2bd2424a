#!/usr/bin/env python
"""The monitoring test project (issue 15): run its tests with ``manage.py test --parallel 2``."""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "monitor.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
