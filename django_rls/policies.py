"""Policy kinds: what protects a model's rows, compiled to the extension's policy groups.

Each policy compiles to one or more *groups* (see ``rls.protect()`` in
docs/sql.md): restrictive policies named ``rls_<group>_<command>``. Groups of
one table combine with AND, so ``[BySite("site"), ByOwner("author")]`` means
"this site's rows, and only the author's".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist, FieldError
from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q
from django.db.models.sql import Query
from psycopg.sql import Literal

ALL_COMMANDS: tuple[str, ...] = ("select", "insert", "update", "delete")
INTEGER_TYPES = frozenset(
    {
        "AutoField",
        "BigAutoField",
        "SmallAutoField",
        "IntegerField",
        "BigIntegerField",
        "SmallIntegerField",
        "PositiveIntegerField",
        "PositiveBigIntegerField",
        "PositiveSmallIntegerField",
    }
)


# A claim's name as rls.claim() reads it, and how a claimed site id becomes the key column's type.
CLAIM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CLAIM_CASTS = {"id": "bigint", "uuid": "uuid"}
NULL_PARENT = ("hide", "read", "write")


class DeclarationError(Exception):
    """A declaration that cannot be compiled; the message says what to fix."""


@dataclass(frozen=True)
class Group:
    """One policy group as rls.protect() takes it."""

    name: str
    using: str
    check: str | None = None
    commands: tuple[str, ...] = ALL_COMMANDS


def _commands(commands: Iterable[str] | None) -> tuple[str, ...]:
    chosen = tuple(c.lower() for c in (commands or ALL_COMMANDS))
    unknown = sorted(set(chosen) - set(ALL_COMMANDS))
    if unknown or not chosen:
        raise DeclarationError(f"commands must be a non-empty subset of {ALL_COMMANDS}, not {commands!r}")
    return tuple(c for c in ALL_COMMANDS if c in chosen)


def _qn(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    try:
        found = model._meta.get_field(name)
    except FieldDoesNotExist:
        raise DeclarationError(f"{model._meta.label} has no field {name!r}") from None
    if not isinstance(found, models.Field) or found.column is None:
        raise DeclarationError(
            f"{model._meta.label}.{name} is not a column of the table (a reverse or many-to-many relation?)"
        )
    return found


def _key_kind(model: type[models.Model], name: str) -> tuple[str, str]:
    """The column of a site/user key field and whether it holds integers ("id") or UUIDs ("uuid")."""
    key = _field(model, name)
    target = key.target_field if key.is_relation else key  # type: ignore[attr-defined]
    if isinstance(target, models.UUIDField):
        return key.column, "uuid"
    # Integer fields, auto fields included, and custom fields stored as one of them.
    if isinstance(target, models.IntegerField) or target.get_internal_type() in INTEGER_TYPES:
        return key.column, "id"
    raise DeclarationError(
        f"{model._meta.label}.{name} is a {target.get_internal_type()}; site and user keys must be integers or UUIDs "
        "(use Custom() for anything else)"
    )


def key_column(model: type[models.Model], name: str) -> str:
    """The database column of a site/user key field (checked to hold integers or UUIDs)."""
    return _key_kind(model, name)[0]


def _accessor(model: type[models.Model], name: str, who: str) -> tuple[str, str]:
    column, kind = _key_kind(model, name)
    return _qn(column), f"rls.{who}_{kind}()"


class Policy:
    """Base class: subclasses return the groups that protect a model."""

    def groups(self, model: type[models.Model], connection: BaseDatabaseWrapper) -> list[Group]:
        raise NotImplementedError

    def key_fields(self) -> tuple[str, ...]:
        """The model fields that say whose a row is (what a leak test tries to forge)."""
        return ()

    def reads(self, model: type[models.Model]) -> tuple[type[models.Model], ...]:
        """The models whose tables this policy's conditions read (their own policies apply to that read)."""
        return ()

    def select_also(self, model: type[models.Model], connection: BaseDatabaseWrapper) -> str | None:
        """A condition under which SELECT may see a row the other groups hide (``django_rls.lookups.Lookup``)."""
        return None

    def key_condition(self, model: type[models.Model], key: str, connection: BaseDatabaseWrapper) -> str | None:
        """This policy's SELECT condition on ``model`` as a condition on a primary key value alone, or None.

        ``key`` is SQL for that value (a child's foreign key column): a child
        protected through this model then compares its own column instead of
        reading this model's table, which saves one subquery per level of a
        chain. None when the condition needs other columns of the row.
        """
        return None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class BySite(Policy):
    """Rows of the current site only: ``site_column = rls.site_id()`` (or ``site_uuid()``).

    ``movable_to`` names a claim: while the context carries it, an UPDATE may
    move the current site's rows to the site the claim holds. PostgreSQL
    checks an updated row against the SELECT policies too, so rows of that
    site are readable while the claim is set; insert and delete stay within
    the current site. Without the claim nothing changes.
    """

    def __init__(
        self, field: str = "site", commands: Iterable[str] | None = None, movable_to: str | None = None
    ) -> None:
        self.field = field
        self.commands = _commands(commands)
        if movable_to is not None and not CLAIM_NAME.fullmatch(movable_to):
            raise DeclarationError(f"movable_to must name a claim (letters, digits, '_', '.', '-'), not {movable_to!r}")
        self.movable_to = movable_to

    def key_fields(self) -> tuple[str, ...]:
        return (self.field,)

    def _readable(self, model: type[models.Model], column: str) -> tuple[str, str]:
        """(own site, own site or the claimed move target) for a key column's SQL."""
        _, kind = _key_kind(model, self.field)
        own = f"{column} = rls.site_{kind}()"
        if self.movable_to is None:
            return own, own
        claim = Literal(self.movable_to).as_string(None)
        return own, f"{own} OR {column} = rls.claim({claim})::{_CLAIM_CASTS[kind]}"

    def groups(self, model: type[models.Model], connection: BaseDatabaseWrapper) -> list[Group]:
        own, moved = self._readable(model, _qn(_key_kind(model, self.field)[0]))
        if self.movable_to is None:
            return [Group("site", own, None, self.commands)]
        found = []
        stays = tuple(c for c in self.commands if c in ("insert", "delete"))
        if stays:
            found.append(Group("site", own, None, stays))
        if "select" in self.commands:
            found.append(Group("site_moving", moved, None, ("select",)))
        if "update" in self.commands:
            found.append(Group("site_move", own, moved, ("update",)))
        return found

    def key_condition(self, model: type[models.Model], key: str, connection: BaseDatabaseWrapper) -> str | None:
        if "select" not in self.commands:
            return "true"
        if not _field(model, self.field).primary_key:
            return None
        return self._readable(model, key)[1]


class ByOwner(Policy):
    """Rows owned by the current user only."""

    def __init__(self, field: str = "user", commands: Iterable[str] | None = None) -> None:
        self.field = field
        self.commands = _commands(commands)

    def key_fields(self) -> tuple[str, ...]:
        return (self.field,)

    def groups(self, model: type[models.Model], connection: BaseDatabaseWrapper) -> list[Group]:
        column, accessor = _accessor(model, self.field, "user")
        return [Group("owner", f"{column} = {accessor}", None, self.commands)]


class BySiteAndOwner(Policy):
    """Rows of the current site that the current user owns."""

    def __init__(self, site_field: str = "site", owner_field: str = "user") -> None:
        self.site_field = site_field
        self.owner_field = owner_field

    def key_fields(self) -> tuple[str, ...]:
        return (self.site_field, self.owner_field)

    def groups(self, model: type[models.Model], connection: BaseDatabaseWrapper) -> list[Group]:
        return BySite(self.site_field).groups(model, connection) + ByOwner(self.owner_field).groups(model, connection)


class Shared(Policy):
    """Rows of the current site plus rows shared by all sites (NULL site).

    Shared rows are readable everywhere and writable by no request: create and
    change them with django_rls.bypass() or as the owner. Reads and writes are
    two groups, ``shared`` (select) and ``site`` (insert, update, delete), so a
    request can neither delete a shared row nor move it into its own site.
    """

    def __init__(self, field: str = "site") -> None:
        self.field = field

    def key_fields(self) -> tuple[str, ...]:
        return (self.field,)

    def groups(self, model: type[models.Model], connection: BaseDatabaseWrapper) -> list[Group]:
        column, accessor = _accessor(model, self.field, "site")
        own = f"{column} = {accessor}"
        return [
            Group("site", own, None, ("insert", "update", "delete")),
            Group("shared", f"{own} OR {column} IS NULL", None, ("select",)),
        ]


class OwnerOrShared(Policy):
    """Rows the current user owns, plus rows shared with everyone; only owners write.

    Shared means ``shared_field`` is true, or, without one, that the owner is NULL.
    Reads and writes are two groups, ``shared`` (select) and ``owner`` (insert,
    update, delete), so nobody but the owner deletes or takes over a shared row.
    """

    def __init__(self, field: str = "user", shared_field: str | None = None) -> None:
        self.field = field
        self.shared_field = shared_field

    def key_fields(self) -> tuple[str, ...]:
        return (self.field,)

    def groups(self, model: type[models.Model], connection: BaseDatabaseWrapper) -> list[Group]:
        column, accessor = _accessor(model, self.field, "user")
        own = f"{column} = {accessor}"
        if self.shared_field is None:
            shared = f"{column} IS NULL"
        else:
            flag = _field(model, self.shared_field)
            if not isinstance(flag, models.BooleanField):
                raise DeclarationError(f"{model._meta.label}.{self.shared_field} must be a BooleanField")
            shared = f"{_qn(flag.column)} IS TRUE"
        return [
            Group("owner", own, None, ("insert", "update", "delete")),
            Group("shared", f"{own} OR {shared}", None, ("select",)),
        ]


class Membership(Policy):
    """Rows of every site the current user is a member of, per a membership model.

    ``through`` is the membership model ("app_label.Model") with a user key
    ``user_field`` and a site key ``site_field``.
    """

    def __init__(self, through: str, field: str = "site", user_field: str = "user", site_field: str = "site") -> None:
        self.through = through
        self.field = field
        self.user_field = user_field
        self.site_field = site_field

    def key_fields(self) -> tuple[str, ...]:
        return (self.field,)

    def reads(self, model: type[models.Model]) -> tuple[type[models.Model], ...]:
        try:
            return (apps.get_model(self.through),)
        except (LookupError, ValueError):
            return ()  # groups() says so

    def groups(self, model: type[models.Model], connection: BaseDatabaseWrapper) -> list[Group]:
        return [Group("membership", self._member(model, _qn(key_column(model, self.field)), connection))]

    def _member(self, model: type[models.Model], column: str, connection: BaseDatabaseWrapper) -> str:
        try:
            membership = apps.get_model(self.through)
        except (LookupError, ValueError):
            raise DeclarationError(f"membership model {self.through!r} is not installed") from None
        member_site, _ = _key_kind(membership, self.site_field)
        member_user, user_accessor = _accessor(membership, self.user_field, "user")
        member_table = connection.ops.quote_name(membership._meta.db_table)
        return (
            f"{column} IN (SELECT m.{_qn(member_site)} FROM {member_table} m WHERE m.{member_user} = {user_accessor})"
        )

    def key_condition(self, model: type[models.Model], key: str, connection: BaseDatabaseWrapper) -> str | None:
        if not _field(model, self.field).primary_key:
            return None
        return self._member(model, key, connection)


class Members(Policy):
    """For the membership table itself: a user's own memberships, in every site, and the current site's members.

    ``Membership("app.SiteMember")`` on the membership model would read the
    table its own policy protects, and PostgreSQL refuses every query with
    "infinite recursion detected in policy" (check E020). This reads no other
    row: ``user = current user OR site = current site``. Rows are written in
    the current site only (insert, update and delete see only its rows), so a
    request never adds, moves or removes a membership of another site.

    ``parent=True`` also shows (and lets a request delete) the memberships of
    every site row the request may see through that model's own policies:
    the members of each project a user owns or belongs to. Deleting a project
    then finds and deletes all of its memberships, whatever the current site.
    The site model must then not read this table through SQL (E020): protect
    it with ``OwnerOrMember``, which reads memberships with
    ``rls.member_of()``.
    """

    def __init__(self, user_field: str = "user", site_field: str = "site", parent: bool = False) -> None:
        self.user_field = user_field
        self.site_field = site_field
        self.parent = parent

    def key_fields(self) -> tuple[str, ...]:
        return (self.site_field, self.user_field)

    def reads(self, model: type[models.Model]) -> tuple[type[models.Model], ...]:
        return _parents(model, (self.site_field,)) if self.parent else ()

    def groups(self, model: type[models.Model], connection: BaseDatabaseWrapper) -> list[Group]:
        site, site_accessor = _accessor(model, self.site_field, "site")
        user, user_accessor = _accessor(model, self.user_field, "user")
        in_site = f"{site} = {site_accessor}"
        if not self.parent:
            return [
                Group("members", f"{in_site} OR {user} = {user_accessor}", None, ("select",)),
                Group("members_site", in_site, None, ("insert", "update", "delete")),
            ]
        visible = _parent_exists(model, self.site_field, connection)
        return [
            Group("members", f"{in_site} OR {user} = {user_accessor} OR {visible}", None, ("select",)),
            Group("members_site", in_site, None, ("insert", "update")),
            Group("members_parent", f"{in_site} OR {visible}", None, ("delete",)),
        ]


def _parents(model: type[models.Model], fields: Sequence[str]) -> tuple[type[models.Model], ...]:
    parents = []
    for name in fields:
        try:
            fk = model._meta.get_field(name)
        except FieldDoesNotExist:
            continue  # groups() says so
        if fk.is_relation and fk.related_model is not None and not isinstance(fk.related_model, str):
            parents.append(fk.related_model)
    return tuple(parents)


def _foreign_key(model: type[models.Model], name: str) -> models.ForeignKey[Any, Any]:
    fk = _field(model, name)
    if not fk.is_relation or fk.many_to_many:
        raise DeclarationError(f"{model._meta.label}.{name} must be a ForeignKey or OneToOneField")
    return fk  # type: ignore[return-value]


def _parent_exists(model: type[models.Model], name: str, connection: BaseDatabaseWrapper) -> str:
    """``EXISTS`` a row of the parent that ``name`` points at, read under the parent's own policies."""
    fk = _foreign_key(model, name)
    parent = fk.related_model
    table = connection.ops.quote_name(model._meta.db_table)
    parent_key = fk.target_field.column  # type: ignore[attr-defined]
    return (
        f"EXISTS (SELECT 1 FROM {connection.ops.quote_name(parent._meta.db_table)} p "  # type: ignore[union-attr]
        f"WHERE p.{_qn(parent_key)} = {table}.{_qn(fk.column)})"
    )


def _parent_condition(model: type[models.Model], name: str, connection: BaseDatabaseWrapper) -> str:
    """The condition that the parent row ``name`` points at is visible: on the key alone when the parent allows it."""
    from django_rls.declarations import all_declarations

    fk = _foreign_key(model, name)
    parent = fk.related_model
    declaration = all_declarations().get(parent._meta.label)  # type: ignore[union-attr]
    if declaration is not None and fk.target_field.primary_key:  # type: ignore[attr-defined]
        key = _qn(fk.column)
        conditions = [policy.key_condition(parent, key, connection) for policy in declaration.policies]  # type: ignore[arg-type]
        if all(c is not None for c in conditions):
            kept = [f"({c})" for c in conditions if c != "true"]
            return f"{key} IS NOT NULL AND " + " AND ".join(kept) if kept else f"{key} IS NOT NULL"
    return _parent_exists(model, name, connection)


class ThroughParent(Policy):
    """Rows whose parent rows the request may see: for children without a site column of their own.

    Name one foreign key (``ThroughParent("order")``), or both sides of a
    many-to-many through table (``ThroughParent("article", "tag")``). The
    parent's own policies decide, because the check reads the parent table;
    when the parent is protected on its primary key alone (``BySite`` on the
    key, ``Membership`` through it), the child compares its own foreign key
    instead and reads nothing, so a chain nests one subquery fewer per level.

    ``or_where`` (a ``Q`` over the model's own columns, or SQL text) is OR'd
    with the parent condition for reads (SELECT); ``or_check`` likewise for
    writes (INSERT, UPDATE, DELETE). ``null_parent`` says what happens to rows
    whose parent key is NULL: ``"hide"`` (the default: no request sees them),
    ``"read"`` (every request reads them, none writes them, as ``Shared``
    rows) or ``"write"`` (every request reads and writes them). When reads
    and writes differ the policy has two groups, ``parent`` for the writes and
    ``parent_read`` for SELECT.
    """

    def __init__(
        self,
        *fields: str,
        commands: Iterable[str] | None = None,
        or_where: Q | str | None = None,
        or_check: Q | str | None = None,
        null_parent: str | None = None,
    ) -> None:
        if not fields:
            raise DeclarationError("ThroughParent needs at least one foreign key field")
        if null_parent is not None and null_parent not in NULL_PARENT:
            raise DeclarationError(f"null_parent must be one of {', '.join(NULL_PARENT)}, not {null_parent!r}")
        self.fields = fields
        self.commands = _commands(commands)
        self.or_where = or_where
        self.or_check = or_check
        # None: "hide", the default, which check W010 points out for nullable foreign keys.
        self.null_parent = null_parent

    def key_fields(self) -> tuple[str, ...]:
        return self.fields

    def reads(self, model: type[models.Model]) -> tuple[type[models.Model], ...]:
        return _parents(model, self.fields)

    def groups(self, model: type[models.Model], connection: BaseDatabaseWrapper) -> list[Group]:
        through = [_parent_condition(model, name, connection) for name in self.fields]
        nulls = [f"{_qn(_foreign_key(model, name).column)} IS NULL" for name in self.fields]
        either = " AND ".join(f"({null} OR {c})" for null, c in zip(nulls, through, strict=True))
        read = written = " AND ".join(through)
        if self.null_parent in ("read", "write"):
            read = either
        if self.null_parent == "write":
            written = either
        if self.or_where is not None:
            read = f"({read}) OR ({compile_condition(model, self.or_where, connection)})"
        if self.or_check is not None:
            written = f"({written}) OR ({compile_condition(model, self.or_check, connection)})"
        if read == written:
            return [Group("parent", read, None, self.commands)]
        found = []
        writes = tuple(c for c in self.commands if c != "select")
        if writes:
            found.append(Group("parent", written, None, writes))
        if "select" in self.commands:
            found.append(Group("parent_read", read, None, ("select",)))
        return found


class OwnerOrMember(Policy):
    """Rows the current user owns or is a member of: projects with an owner and a membership model.

    ``through`` is the membership model ("app_label.Model"); its ``member_field``
    points at this model and its ``user_field`` at the user. Membership is read
    with ``rls.member_of()``, which runs as the caller, reads only the user's
    own membership rows, and refuses unless the membership table's own SELECT
    policies show the user those rows (``Members(user_field, member_field)``
    does): so the membership table's policy may read this model (a project's
    members visible to everyone who sees the project) without recursion.

    Members are admitted for ``member_commands`` (default: select); every
    other command is for the owner only.
    """

    def __init__(
        self,
        through: str,
        owner_field: str = "owner",
        member_field: str = "project",
        user_field: str = "user",
        member_commands: Iterable[str] | None = ("select",),
    ) -> None:
        self.through = through
        self.owner_field = owner_field
        self.member_field = member_field
        self.user_field = user_field
        self.member_commands = _commands(member_commands)

    def key_fields(self) -> tuple[str, ...]:
        return (self.owner_field,)

    def membership(self) -> type[models.Model]:
        try:
            return apps.get_model(self.through)
        except (LookupError, ValueError):
            raise DeclarationError(f"membership model {self.through!r} is not installed") from None

    def groups(self, model: type[models.Model], connection: BaseDatabaseWrapper) -> list[Group]:
        membership = self.membership()
        owner, owner_accessor = _accessor(model, self.owner_field, "user")
        fk = _foreign_key(membership, self.member_field)
        if fk.related_model is not model:
            raise DeclarationError(
                f"{self.through}.{self.member_field} must point at {model._meta.label}, not "
                f"{getattr(fk.related_model, '_meta', None) and fk.related_model._meta.label}"  # type: ignore[union-attr]
            )
        target = fk.target_field  # type: ignore[attr-defined]
        user_column, _ = _key_kind(membership, self.user_field)
        table = Literal(connection.ops.quote_name(membership._meta.db_table)).as_string(None)
        member = (
            f"rls.member_of({table}::regclass, {Literal(fk.column).as_string(None)}, "
            f"{Literal(user_column).as_string(None)}, {_qn(target.column)})"
        )
        own = f"{owner} = {owner_accessor}"
        found = [Group("owner_or_member", f"{own} OR {member}", None, self.member_commands)]
        rest = tuple(c for c in ALL_COMMANDS if c not in self.member_commands)
        if rest:
            found.append(Group("owner", own, None, rest))
        return found


class Custom(Policy):
    """Any condition: a Q object over the model's own columns, or an SQL expression.

    Use ``django_rls.expressions.CurrentSite()`` and friends inside Q objects to
    refer to the context. ``check`` (default: ``using``) is what written rows
    must satisfy.
    """

    def __init__(
        self,
        using: Q | str,
        check: Q | str | None = None,
        commands: Iterable[str] | None = None,
        name: str = "custom",
    ) -> None:
        self.using = using
        self.check = check
        self.commands = _commands(commands)
        self.name = name

    def groups(self, model: type[models.Model], connection: BaseDatabaseWrapper) -> list[Group]:
        using = compile_condition(model, self.using, connection)
        check = compile_condition(model, self.check, connection) if self.check is not None else None
        return [Group(self.name, using, check, self.commands)]


def compile_condition(model: type[models.Model], condition: Q | str, connection: BaseDatabaseWrapper) -> str:
    """SQL text for a policy condition; Q objects may only use the model's own columns."""
    if isinstance(condition, str):
        if not condition.strip():
            raise DeclarationError(f"empty SQL condition for {model._meta.label}")
        return condition
    if not isinstance(condition, Q):
        raise DeclarationError(f"a policy condition must be a Q object or SQL text, not {type(condition).__name__}")
    query = Query(model)
    joined = False
    try:
        where = query.build_where(condition)
    except FieldError as exc:
        joined = "Joined field" in str(exc)
        if not joined:
            raise DeclarationError(f"the condition {condition!r} on {model._meta.label}: {exc}") from None
    if joined or sum(1 for count in query.alias_refcount.values() if count) > 1:
        raise DeclarationError(
            f"the condition {condition!r} on {model._meta.label} follows a relation; policies can only use the "
            "table's own columns (use ThroughParent, or SQL text with an EXISTS subquery)"
        )
    compiler = query.get_compiler(connection=connection)
    sql, params = where.as_sql(compiler, connection)
    # Inline the parameters as SQL literals without a database round trip, so
    # that declarations compile (and system checks run) before any connection.
    return sql % tuple(Literal(param).as_string(None) for param in params)


@dataclass(frozen=True)
class Declaration:
    """Everything declared for one model."""

    model: str  # "app_label.ModelName"
    policies: tuple[Policy, ...]
    audit: bool = False
    audit_exclude: tuple[str, ...] = ()
    audit_mask: tuple[str, ...] = ()
    origin: str = field(default="", compare=False)

    def model_class(self) -> type[models.Model]:
        return apps.get_model(self.model)

    def key_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for policy in self.policies for name in policy.key_fields()))

    def audit_columns(self) -> tuple[list[str], list[str]]:
        """The database columns to exclude from and to mask in the audit trail."""
        model = self.model_class()
        return (
            sorted(_field(model, name).column for name in self.audit_exclude),
            sorted(_field(model, name).column for name in self.audit_mask),
        )

    def groups(self, connection: BaseDatabaseWrapper) -> list[Group]:
        model = self.model_class()
        groups: dict[str, Group] = {}
        for policy in self.policies:
            for group in policy.groups(model, connection):
                if group.name in groups:
                    raise DeclarationError(
                        f"{self.model} has two policies that both define the {group.name!r} group; "
                        "combine them or give a Custom policy its own name"
                    )
                groups[group.name] = group
        widening = [condition for policy in self.policies if (condition := policy.select_also(model, connection))]
        if not widening:
            return list(groups.values())
        if not groups:
            raise DeclarationError(
                f"{self.model} declares only lookups, which widen the SELECT of its other policies: "
                'add the policy that protects its rows, e.g. BySite("site")'
            )
        return [part for group in groups.values() for part in _widen_select(group, " OR ".join(widening))]


def _widen_select(group: Group, condition: str) -> list[Group]:
    """The group, its SELECT split off as ``<name>_lookup`` that also lets rows matching ``condition`` through."""
    if "select" not in group.commands:
        return [group]
    rest = tuple(command for command in group.commands if command != "select")
    select = Group(f"{group.name}_lookup", f"({group.using}) OR {condition}", None, ("select",))
    return [Group(group.name, group.using, group.check, rest), select] if rest else [select]


def policy_cycles(declarations: Mapping[str, Declaration]) -> list[list[str]]:
    """Declared models whose policies read each other's tables in a circle (a model reading itself included).

    PostgreSQL applies a table's policies to every read of it, policies' own
    reads too, so such a circle fails every query with "infinite recursion
    detected in policy". Custom SQL is not followed. Each cycle is listed
    once, as labels from its smallest label back to it.
    """
    reads: dict[str, list[str]] = {}
    for label, declaration in declarations.items():
        try:
            model = declaration.model_class()
        except LookupError:
            continue  # reported by E005
        targets = {m._meta.label for policy in declaration.policies for m in policy.reads(model)}
        reads[label] = sorted(t for t in targets if t in declarations)
    cycles: set[tuple[str, ...]] = set()

    def walk(path: list[str]) -> None:
        for target in reads.get(path[-1], []):
            if target == path[0]:
                start = path.index(min(path))
                cycles.add(tuple(path[start:] + path[:start]))
            elif target not in path and target > path[0]:
                walk([*path, target])

    for label in sorted(reads):
        walk([label])
    return [[*cycle, cycle[0]] for cycle in sorted(cycles)]


def as_policies(policies: Sequence[Policy]) -> tuple[Policy, ...]:
    for policy in policies:
        if not isinstance(policy, Policy):
            raise DeclarationError(f"expected django_rls policies (BySite(), ByOwner(), ...), got {policy!r}")
    return tuple(policies)
