"""The current request context, held in a ContextVar.

Threads, asyncio tasks, ``sync_to_async`` calls, management commands, Celery
tasks and tests all see the context of the code that entered it, and nothing
else. The database layer (``django_rls.database``) reads it before each query.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Values:
    """A context as the database receives it: ids as canonical text, claims as JSON text."""

    site: str | None
    user: str | None
    claims: str | None

    @property
    def claims_dict(self) -> dict[str, Any] | None:
        return json.loads(self.claims) if self.claims is not None else None


EMPTY = Values(None, None, None)


# The id forms the extension accepts (ext/context.c, ParseId); tests/id_vectors.json holds
# the cases both sides are tested against. A UUID form is tried first, so 32 decimal digits
# are a UUID, never an integer.
_UUID_HYPHENATED = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_UUID_PLAIN = re.compile(r"[0-9A-Fa-f]{32}")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def parse_id_text(text: str) -> str | None:
    """The canonical text of an id written as text, exactly as the extension reads it.

    "" means no id (None). A UUID is 8-4-4-4-12 or 32 hexadecimal digits, optionally in
    braces; an integer is decimal with an optional sign and fits 64 bits. Anything else,
    surrounding spaces included, raises ValueError.
    """
    if text == "":
        return None
    inner = text[1:-1] if len(text) >= 2 and text[0] == "{" and text[-1] == "}" else text
    if _UUID_HYPHENATED.fullmatch(inner) or _UUID_PLAIN.fullmatch(inner):
        return str(uuid.UUID(hex=inner))
    if _INTEGER.fullmatch(text):
        number = int(text)
        if _INT64_MIN <= number <= _INT64_MAX:
            return str(number)
    raise ValueError(f"{text!r} is neither a 64-bit integer nor a UUID (8-4-4-4-12 or 32 hexadecimal digits)")


def normalize_id(value: Any, what: str) -> str | None:
    """Turn a model instance, pk, UUID or id text into the canonical id text the extension expects."""
    if value is None:
        return None
    if hasattr(value, "_meta") and hasattr(value, "pk"):
        value = value.pk
        if value is None:
            raise ValueError(f"the {what} instance has no primary key yet; save it before using it as a context")
    if isinstance(value, bool):
        raise TypeError(f"a {what} id must be an int, a UUID or a model instance, not a bool")
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{what} id {value} does not fit in 64 bits")
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return parse_id_text(value)
        except ValueError:
            raise ValueError(f"{what} id {value!r} is neither a 64-bit integer nor a UUID") from None
    raise TypeError(f"a {what} id must be an int, a UUID or a model instance, not {type(value).__name__}")


# Ids of these exact types (not bool, not a model instance, whose pk may change) give the same
# Values object every time: normalising them again costs more than the query's own work here,
# and the bridge then finds the context it holds by identity.
_PLAIN_IDS = (int, str, type(None))


@functools.lru_cache(maxsize=1024, typed=True)
def _plain_values(site: int | str | None, user: int | str | None) -> Values:
    return Values(normalize_id(site, "site"), normalize_id(user, "user"), None)


def make_values(site: Any = None, user: Any = None, claims: Mapping[str, Any] | None = None) -> Values:
    if claims is None and type(site) in _PLAIN_IDS and type(user) in _PLAIN_IDS:
        return _plain_values(site, user)
    if claims is not None and not isinstance(claims, Mapping):
        raise TypeError(f"claims must be a mapping or None, not {type(claims).__name__}")
    if claims and any(isinstance(key, str) and key.startswith("lookup:") for key in claims):
        raise ValueError(
            'claims whose names start with "lookup:" belong to django_rls.lookups.find(), which alone sets them'
        )
    return Values(
        normalize_id(site, "site"),
        normalize_id(user, "user"),
        json.dumps(dict(claims), sort_keys=True, separators=(",", ":")) if claims else None,
    )


class Frame:
    """One entry of the context stack: knows the values to send, possibly lazily."""

    #: While True, queries run without a context (used while resolving a request's user).
    resolving = False
    #: Queries go to the bypass database instead (see django_rls.bypass).
    bypass_reason: str | None = None
    #: The block or request that entered it has ended: a late exit of another block never makes it current again.
    closed = False
    #: What was current when it was last entered (``_NOT_ENTERED`` or None: no frame, or no context).
    entered_over: Any = None

    def values(self) -> Values:
        raise NotImplementedError

    def handed_over(self) -> Frame:
        """This frame as propagate() hands it to other code (a request's frame: one that outlives the request)."""
        return self


class FixedFrame(Frame):
    def __init__(self, values: Values) -> None:
        self._values = values

    def values(self) -> Values:
        return self._values


class BypassFrame(Frame):
    """Code run outside any site: the protected aliases see an empty context, the router sends queries elsewhere."""

    def __init__(self, reason: str) -> None:
        self.bypass_reason = reason

    def values(self) -> Values:
        return EMPTY


_NOT_ENTERED: Any = object()  # no context(), request or no_context() entered: a django-scopes scope may give one
_current: ContextVar[Frame | None] = ContextVar("django_rls_context", default=_NOT_ENTERED)


class ScopeFrame(Frame):
    """Code outside any request, context() or no_context() that entered a django-scopes scope with a site."""

    def __init__(self, site: Any) -> None:
        self._values = make_values(site=site)

    def values(self) -> Values:
        return self._values


def current_frame() -> Frame | None:
    """The entered frame; outside one, with DJANGO_RLS["DJANGO_SCOPES_SITE"], the active scope's site."""
    frame = _current.get()
    if frame is not _NOT_ENTERED:
        return frame
    from django_rls.conf import rls_settings

    if rls_settings.DJANGO_SCOPES_SITE is None:
        return None
    from django_rls.resolvers import scoped_site

    site = scoped_site()
    return ScopeFrame(site) if site is not None else None


def inside_context() -> bool:
    """Whether a request, ``context()``, ``no_context()`` or ``bypass()`` block (or a django-scopes scope) is current."""
    return _current.get() is not _NOT_ENTERED or current_frame() is not None


def current_values() -> Values:
    """The context the next query will run with (EMPTY when none)."""
    frame = current_frame()
    return frame.values() if frame is not None and not frame.resolving else EMPTY


@contextmanager
def _entered(frame: Frame | None) -> Iterator[Frame | None]:
    entry = enter_frame(frame)
    try:
        yield frame
    finally:
        reset_frame(entry)


class context:
    """Run code as a site and user: ``with django_rls.context(site=..., user=...):`` or as a decorator.

    Nested contexts replace the outer one and restore it on exit. ``site`` and
    ``user`` take model instances, primary keys (int or UUID) or None.
    Works for sync and async functions; each thread or task keeps its own.
    """

    def __init__(self, site: Any = None, user: Any = None, claims: Mapping[str, Any] | None = None) -> None:
        self.values = make_values(site, user, claims)
        self._entries: list[Entry] = []

    def __enter__(self) -> Values:
        self._entries.append(enter_frame(FixedFrame(self.values)))
        return self.values

    def __exit__(self, *exc_info: object) -> None:
        reset_frame(self._entries.pop())

    async def __aenter__(self) -> Values:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)

    def __call__(self, func: F) -> F:
        return _decorate(func, lambda: _entered(FixedFrame(self.values)))


class no_context:
    """Run code with an empty context (no rows of protected tables), for example inside another context."""

    def __enter__(self) -> None:
        self._entry = enter_frame(None)

    def __exit__(self, *exc_info: object) -> None:
        reset_frame(self._entry)

    def __call__(self, func: F) -> F:
        return _decorate(func, lambda: _entered(None))


def _decorate(func: F, enter: Callable[[], Any]) -> F:
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            with enter():
                return await func(*args, **kwargs)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with enter():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def propagate(func: F) -> F:
    """``func`` bound to the context current now, wherever it runs later: for thread pools.

    A new thread starts with no context (``ContextVar`` values do not cross into
    ``threading.Thread`` or ``ThreadPoolExecutor`` workers), so its queries see no
    protected rows. ``pool.submit(django_rls.propagate(work), item)`` runs ``work`` with
    the context (or the ``bypass()``) of the code that submitted it, and restores the
    worker's own afterwards. Each thread still opens its own database connection.
    A request's context handed over this way stays usable after the request ended; one
    that a task or thread took without ``propagate()`` does not (``RequestEnded``).
    """
    frame = _current.get()
    if isinstance(frame, Frame):
        frame = frame.handed_over()

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        token = _current.set(frame)
        try:
            return func(*args, **kwargs)
        finally:
            _current.reset(token)

    return run  # type: ignore[return-value]


class Entry:
    """One entering of a frame, to be left with reset_frame()."""

    __slots__ = ("frame", "token")

    def __init__(self, frame: Frame | None, token: Token[Frame | None]) -> None:
        self.frame = frame
        self.token = token


def enter_frame(frame: Frame | None) -> Entry:
    """Low-level: make frame current until reset_frame(entry). Used by the middleware."""
    if frame is not None:
        frame.entered_over = _current.get()
    return Entry(frame, _current.set(frame))


def _below_current(frame: Frame | None) -> bool:
    """Whether frame is the current frame, or one the current frame was entered over (directly or not)."""
    walk: Any = _current.get()
    passed: set[int] = set()
    while walk is not frame:
        if not isinstance(walk, Frame) or id(walk) in passed:
            return False
        passed.add(id(walk))
        walk = walk.entered_over
    return True


def reset_frame(entry: Entry, close: bool = True) -> None:
    """Leave what enter_frame() entered: what was current before it is current again, if that is still open.

    Blocks may end out of order: a generator suspended inside ``context()`` is closed (or
    collected) while a later block or another request is current, or code calls
    ``__exit__`` itself in the wrong order. Restoring blindly (``ContextVar.reset``) would then
    make a frame current again that has already ended: another request's, or an outer
    block's that has exited. So a block that is neither current nor under the current one
    (a generator's block closed during the next request) leaves the current one alone; one
    that is under it (a request whose view left a generator's block open) ends the blocks
    above it too; and where what it was entered over has ended, what that one was entered over
    is restored. ``close=False`` leaves a frame that is entered again (a streaming body's steps)
    open.
    """
    if entry.frame is not None and close:
        entry.frame.closed = True
    if not _below_current(entry.frame):
        return
    previous = entry.token.old_value
    if previous is Token.MISSING:
        previous = _NOT_ENTERED
    passed: set[int] = set()
    while isinstance(previous, Frame) and previous.closed:
        if id(previous) in passed:  # frames entered over each other: nothing to tell
            previous = None
            break
        passed.add(id(previous))
        previous = previous.entered_over
    _current.set(previous)
