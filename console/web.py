"""The console's Starlette application: sign-in and out, and the guard every page and
action goes through.

Every route is declared with ``guarded(action)``: no session, a page answers with the
sign-in page (an action with 401); the staff member's roles must allow ``action``
(``access.py``, else 403); a POST must carry the session's CSRF token (else 403). The
handler then runs with the staff member as the caller (``charging.security.identity``),
so audit entries written by the domain name it too.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from charging.errors import ChargingError, Conflict, InvalidRequest, LimitExceeded, NotFound
from charging.money import format_micros, format_minor
from charging.security.identity import Identity, set_caller
from console import access, sessions
from console.audit import actor
from console.desk import Desk
from console.sessions import Session
from console.staff import Staff

log = logging.getLogger("console.web")

HERE = Path(__file__).parent
templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(), auto_reload=False)
templates.filters["micros"] = format_micros
templates.filters["minor"] = format_minor


def linkable(reference: str) -> bool:
    """A reference the page may link to: http or https only (a stored ``javascript:``
    or ``data:`` reference is shown as text, never as a link)."""
    return urlsplit(reference).scheme.lower() in ("http", "https")


templates.tests["linkable"] = linkable


@dataclass(frozen=True)
class Visit:
    """One request of a signed-in staff member."""

    request: Request
    desk: Desk
    staff: Staff
    session: Session
    form: FormData | None = None

    def may(self, action: str) -> bool:
        return access.allowed(action, self.staff.roles)

    @property
    def personal(self) -> bool:
        return access.sees_personal_data(self.staff.roles)

    def field(self, name: str) -> str:
        assert self.form is not None
        value = self.form.get(name, "")
        return value.strip() if isinstance(value, str) else ""

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return render(self.request, template, status, visit=self, **context)

    @property
    def actor(self) -> str:
        """The staff member as an audit entry's actor (for domain calls that audit in
        their own transaction)."""
        return actor(self.staff.name)

    async def audit(self, action: str, subject: str, reason: str = "", **details: Any) -> None:
        await self.desk.audit.record(self.staff.name, action, subject, reason, **details)

    def done(self, where: str, message: str) -> RedirectResponse:
        """After an action: back to a page (POST, redirect, GET), with what happened."""
        sep = "&" if "?" in where else "?"
        return RedirectResponse(f"{where}{sep}done={quote(message)}", status_code=303)


Handler = Callable[[Visit], Awaitable[Response]]


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = templates.get_template(template).render(
        request=request, access=access, key=lambda: secrets.token_hex(8), **context
    )
    return HTMLResponse(html, status_code=status)


def problem(exc: ChargingError) -> tuple[str, str]:
    """A domain error as (field, message) for the form that caused it."""
    if isinstance(exc, InvalidRequest):
        return exc.field, exc.message
    if isinstance(exc, NotFound | Conflict | LimitExceeded):
        return "", str(exc)
    return "", "the request could not be done: " + type(exc).__name__


def desk_of(request: Request) -> Desk:
    desk: Desk = request.app.state.desk
    return desk


async def visitor(request: Request) -> tuple[Staff, Session] | None:
    desk = desk_of(request)
    session_id = sessions.unsign(desk.secret, request.cookies.get(sessions.COOKIE, ""))
    session = await desk.sessions.get(session_id) if session_id else None
    staff = await desk.staff.get(session.staff) if session is not None else None
    if session is None or staff is None or staff.disabled:
        return None
    return staff, session


def guarded(action: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    if action not in access.ACTIONS:
        raise ValueError(f"no access rule for console action {action}")

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            who = await visitor(request)
            if who is None:
                if request.method == "GET":
                    return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
                return render(request, "denied.html", 401, reason="Your session has ended: sign in again.")
            staff, session = who
            form = None
            if request.method == "POST":
                form = await request.form()
                token = form.get("csrf", "")
                if not isinstance(token, str) or not hmac.compare_digest(token, session.csrf):
                    return render(request, "denied.html", 403, reason="The form is out of date: reload the page.")
            visit = Visit(request, desk_of(request), staff, session, form)
            if not visit.may(action):
                return visit.render("denied.html", 403, reason="Your roles do not allow this.")
            set_caller(Identity(f"staff:{staff.name}", staff.roles))
            return await handler(visit)

        endpoint.__name__ = handler.__name__
        return endpoint

    return wrap


def login_form(request: Request, status: int = 200, **context: Any) -> HTMLResponse:
    """The sign-in page with the form's token, keeping a valid one (another tab's form
    stays good) or setting a new signed cookie."""
    desk = desk_of(request)
    token = sessions.login_token_of(desk.secret, request.cookies.get(sessions.LOGIN_COOKIE, ""))
    fresh = token is None
    token = token or sessions.login_token()
    response = render(request, "login.html", status, csrf=token, **context)
    if fresh:
        response.set_cookie(
            sessions.LOGIN_COOKIE,
            sessions.sign_login(desk.secret, token),
            max_age=sessions.LOGIN_TOKEN_S,
            httponly=True,
            secure=desk.secure_cookies,
            samesite="strict",
        )
    return response


async def login_page(request: Request) -> Response:
    if request.method == "GET":
        return login_form(request, next=request.query_params.get("next", "/"))
    desk = desk_of(request)
    form = await request.form()
    name, password, target, token = (str(form.get(k, "")) for k in ("name", "password", "next", "csrf"))
    if not sessions.login_form_matches(desk.secret, request.cookies.get(sessions.LOGIN_COOKIE, ""), token):
        log.info("console sign-in refused: the form's token does not match")
        return login_form(request, 403, next=target, error="The sign-in form is out of date: sign in again.")
    staff = await desk.staff.authenticate(name.strip(), password)
    if staff is None:
        log.info("console sign-in refused")
        return login_form(request, 401, next=target, error="Wrong name or password, or the account is disabled.")
    session = await desk.sessions.open(staff.name)
    await desk.audit.record(staff.name, "sign_in", f"staff:{staff.name}")
    # Only a path on this site: never an absolute URL handed in by a link.
    where = target if target.startswith("/") and not target.startswith("//") else "/"
    response = RedirectResponse(where, status_code=303)
    response.set_cookie(
        sessions.COOKIE,
        sessions.sign(desk.secret, session.id),
        max_age=desk.sessions.idle_s,
        httponly=True,
        secure=desk.secure_cookies,
        samesite="strict",
    )
    response.delete_cookie(sessions.LOGIN_COOKIE, httponly=True, secure=desk.secure_cookies, samesite="strict")
    return response


async def logout(request: Request) -> Response:
    who = await visitor(request)
    response = RedirectResponse("/login", status_code=303)
    if who is not None:
        _staff, session = who
        form = await request.form()
        if hmac.compare_digest(str(form.get("csrf", "")), session.csrf):
            await desk_of(request).sessions.close(session)
    response.delete_cookie(sessions.COOKIE, httponly=True, secure=desk_of(request).secure_cookies, samesite="strict")
    return response


async def home(request: Request) -> Response:
    return RedirectResponse("/search", status_code=303)


async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers.setdefault(
        "Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'"
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def build(desk: Desk) -> Starlette:
    from console import actions, application, customers, operations

    routes: list[BaseRoute] = [
        Route("/", home),
        Route("/login", login_page, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        *customers.routes(),
        *application.routes(),
        *actions.routes(),
        *operations.routes(),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=security_headers)])
    app.state.desk = desk
    return app
