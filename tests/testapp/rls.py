"""Declarations for models this project cannot edit (autodiscovered at startup)."""

from __future__ import annotations

import django_rls
from django_rls.policies import BySite

django_rls.register("thirdparty.Gadget", BySite("site_id"))
