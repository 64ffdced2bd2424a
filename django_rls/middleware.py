"""The middleware: one class for WSGI and ASGI that makes the request's site and user the context.

Place it after ``AuthenticationMiddleware``. It resolves nothing up front: the
site and user are looked up when the request first queries a protected
database, so a request that never touches the database costs no query.

The site is looked up again before every query of the request, so middleware
placed after this one may still set what the resolver reads (for instance a
tenant attribute) after its own first query: until the resolver returns a
site, queries run without one. Once queries have run with a site, a resolver
that returns another one (or None) raises ``SiteChanged`` instead of moving
the rest of the request to another tenant. A view that means to move the request
to another site or user (after signing up, accepting an invitation, creating a
project to work in) says so with ``django_rls.switch_context()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from django_rls.conf import rls_settings
from django_rls.state import Frame, Values, current_frame, enter_frame, make_values, normalize_id, reset_frame

_UNRESOLVED = object()


class SiteChanged(Exception):
    """The site resolver returned another site after queries had run with the first one."""


class RequestEnded(RuntimeError):
    """A query ran with the context of a request whose response was already complete."""


class RequestFrame(Frame):
    """The context of one request, resolved on first use.

    The site and the user are read again before every query that follows:
    Django REST framework authenticates inside the view and replaces
    ``request.user`` there, and a tenant middleware placed after RlsMiddleware
    may set the site after a session or user lookup has queried.
    """

    # What switch_context() chose for the rest of the request, in place of the resolvers' answer.
    switched_site: Any = _UNRESOLVED
    switched_user: Any = _UNRESOLVED

    def __init__(self, request: HttpRequest) -> None:
        self.request = request
        self._claims: Any = _UNRESOLVED
        self._site_resolver: Callable[[HttpRequest], Any] | None = None
        self._user_resolver: Callable[[HttpRequest], Any] | None = None
        # The site id that queries have run with; None until one has.
        self._used_site: str | None = None
        # values() runs before every query: the normalised Values are reused for as long as
        # the resolved site and user are the same objects.
        self._site: Any = _UNRESOLVED
        self._user: Any = _UNRESOLVED
        self._values: Values | None = None

    def _resolve(self, resolver: Callable[[HttpRequest], Any] | None) -> Any:
        if resolver is None:
            return None
        self.resolving = True
        try:
            return resolver(self.request)
        finally:
            self.resolving = False

    def values(self) -> Values:
        if self.closed:
            raise RequestEnded(
                "this query runs with the context of a request that has ended (an asyncio task, a thread or a "
                "callback that copied the request's context and outlived it): give the work a context of its "
                "own with `with django_rls.context(site=..., user=...)`, or hand it over explicitly with "
                "django_rls.propagate(fn) while the request runs"
            )
        return self.resolved_values()

    def handed_over(self) -> Frame:
        return HandedOverFrame(self)

    def resolved_values(self) -> Values:
        if self._claims is _UNRESOLVED:
            # The resolvers a request uses are read once, with its claims.
            self._site_resolver = rls_settings.SITE_RESOLVER
            self._user_resolver = rls_settings.USER_RESOLVER
            self._claims = self._resolve(rls_settings.CLAIMS_RESOLVER)
        # Both resolvers in one resolving stretch: this runs before every query of the request.
        site, user = self.switched_site, self.switched_user
        self.resolving = True
        try:
            if site is _UNRESOLVED:
                site = self._site_resolver(self.request) if self._site_resolver is not None else None
            if user is _UNRESOLVED:
                user = self._user_resolver(self.request) if self._user_resolver is not None else None
        finally:
            self.resolving = False
        if self._values is None or site is not self._site or user is not self._user:
            values = make_values(site, user, self._claims)
            if self._used_site is not None and values.site != self._used_site:
                raise SiteChanged(_site_changed_message(self._used_site, values.site))
            self._site, self._user, self._values = site, user, values
        self._used_site = self._values.site
        return self._values


class HandedOverFrame(Frame):
    """A request's context handed to other code with ``propagate()``: usable after the request ends, as asked."""

    def __init__(self, request_frame: RequestFrame) -> None:
        self.request_frame = request_frame

    @property
    def resolving(self) -> bool:  # type: ignore[override]
        return self.request_frame.resolving

    def values(self) -> Values:
        return self.request_frame.resolved_values()


def _site_changed_message(used: str, now: str | None) -> str:
    resolver = rls_settings.SITE_RESOLVER
    name = getattr(resolver, "__qualname__", repr(resolver))
    return (
        f"the request's site changed from {used} to {now or 'none'} after queries had run with site {used}: "
        f"django_rls does not move a request to another site half-way. Make the site resolver ({name}) return "
        "the request's final site from the first query on: set what it reads (a tenant attribute) before any "
        "middleware or view queries with another value."
    )


def switch_context(*, site: Any = _UNRESOLVED, user: Any = _UNRESOLVED) -> None:
    """Run the rest of this request as another site and/or user (model instances, primary keys or None).

    For views that change who the request works for: accepting an invitation,
    creating a project and working in it. The resolvers are no longer asked for
    what is given; what is not given is resolved as before (``login()`` needs no
    switch: the default user resolver reads ``request.user`` before every query).
    The next query runs with the new context, inside the same transaction when one
    is open (``ATOMIC_REQUESTS``): rows written before stay written and commit with
    it, and are seen from then on only as far as the new context's policies allow.
    A ``context()`` block inside the request still runs as it says, and the switch
    applies again after it.
    """
    frame = current_frame()
    if not isinstance(frame, RequestFrame):
        raise RuntimeError(
            "django_rls.switch_context() changes the context of the request being served, and this code runs "
            + ("inside a context(), bypass() or no_context() block" if frame is not None else "outside any request")
            + ": there, wrap the code in `with django_rls.context(site=..., user=...)` instead"
        )
    if site is not _UNRESOLVED:
        normalize_id(site, "site")  # a bad value fails here, not at the next query
        frame.switched_site = site
        frame._used_site = None  # an explicit move, not the resolver changing its mind (SiteChanged)
    if user is not _UNRESOLVED:
        normalize_id(user, "user")
        frame.switched_user = user


class RlsMiddleware:
    """Make the request's site and user the django_rls context for every query the request runs."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        frame = RequestFrame(request)
        entry = enter_frame(frame)
        try:
            response = self.get_response(request)
        finally:
            reset_frame(entry, close=False)
        return _keep_frame_while_streaming(response, frame)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        frame = RequestFrame(request)
        entry = enter_frame(frame)
        try:
            response = await self.get_response(request)
        finally:
            reset_frame(entry, close=False)
        return _keep_frame_while_streaming(response, frame)


def _keep_frame_while_streaming(response: HttpResponseBase, frame: Frame) -> HttpResponseBase:
    """A streaming body runs after the middleware returned: give each step the request's context back.

    The request's frame is closed when its response is complete (here, or after a streaming
    body's last step): a task or callback that copied it and queries later gets
    ``RequestEnded``, and a block that ends later never makes it current again.
    """
    if not getattr(response, "streaming", False):
        frame.closed = True
        return response
    content = response.streaming_content  # type: ignore[attr-defined]
    if hasattr(content, "__aiter__"):
        response.streaming_content = _async_steps(frame, content)  # type: ignore[attr-defined]
    else:
        response.streaming_content = _sync_steps(frame, content)  # type: ignore[attr-defined]
    return response


def _sync_steps(frame: Frame, content: Iterable[Any]) -> Iterator[Any]:
    iterator = iter(content)
    try:
        while True:
            entry = enter_frame(frame)
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            finally:
                reset_frame(entry, close=False)
            yield chunk
    finally:
        frame.closed = True


async def _async_steps(frame: Frame, content: AsyncIterable[Any]) -> AsyncIterator[Any]:
    iterator = aiter(content)
    try:
        while True:
            entry = enter_frame(frame)
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            finally:
                reset_frame(entry, close=False)
            yield chunk
    finally:
        frame.closed = True
