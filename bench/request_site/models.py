"""The one model the views query, in the form each variant's package asks for.

The shared database holds one table per variant of ours, the floor and classic (created by
bench/request_path.py, so unmanaged here); each peer's table is created by `migrate` from
the peer's own model classes, with its policy.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

if settings.VARIANT == "rls-tenants":
    from django_rls_tenants import RLSProtectedModel

    class Tenant(models.Model):
        name = models.CharField(max_length=50)

        def __str__(self) -> str:
            return self.name

    class Item(RLSProtectedModel):  # adds the tenant foreign key, the policy and the scoping manager
        name = models.CharField(max_length=50)
        price = models.IntegerField()

        class Meta(RLSProtectedModel.Meta):
            db_table = settings.TABLE

        def __str__(self) -> str:
            return self.name

elif settings.VARIANT == "django-rls":
    from django.db.models import Q

    from django_rls.models import RLSModel  # django-rls's, not ours: bench/deps.sh
    from django_rls.policies import RLS, ModelPolicy

    class Tenant(models.Model):
        name = models.CharField(max_length=50)

        def __str__(self) -> str:
            return self.name

    TENANT_ISOLATION = ModelPolicy("tenant_isolation", filters=Q(tenant=RLS.tenant_id()))

    class Item(RLSModel):
        tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE)
        name = models.CharField(max_length=50)
        price = models.IntegerField()

        class Meta:
            db_table = settings.TABLE
            rls_policies = [TENANT_ISOLATION]  # noqa: RUF012  -- the docs' form: a list in Meta

        def __str__(self) -> str:
            return self.name

else:

    class Item(models.Model):
        site_id = models.IntegerField()
        name = models.CharField(max_length=50)
        price = models.IntegerField()

        class Meta:
            managed = False
            db_table = settings.TABLE

        def __str__(self) -> str:
            return self.name
