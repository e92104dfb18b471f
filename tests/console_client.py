"""A small HTTP client for the console tests: a real HTTP connection to the console's
uvicorn, keeping the session cookie by hand (it is Secure, and the test server speaks
plain HTTP on loopback) and the CSRF token of the last page."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import httpx

from charging.clock import ManualClock
from charging.server import App
from charging.settings import Settings
from console.staff import StaffBook

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
NOV_18 = 1_795_000_000  # 2026-11-18 (a Wednesday), 10:13 UTC
PASSWORD = "correct horse battery"


class Desk:
    def __init__(self, port: int) -> None:
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", follow_redirects=False, timeout=30)
        self.cookie = ""
        self.login_cookie = ""  # the sign-in form's signed double-submit cookie
        self.csrf = ""
        self.last: httpx.Response | None = None

    async def aclose(self) -> None:
        await self.http.aclose()

    def _headers(self) -> dict[str, str]:
        cookies = "; ".join(c for c in (self.cookie, self.login_cookie) if c)
        return {"Cookie": cookies} if cookies else {}

    def _keep(self, response: httpx.Response) -> httpx.Response:
        for set_cookie in response.headers.get_list("set-cookie"):
            value = set_cookie.split(";", 1)[0]
            name, _, content = value.partition("=")
            if name == "console_session":
                self.cookie = "" if content == '""' else value
            elif name == "console_login":
                self.login_cookie = "" if content == '""' else value
        found = CSRF.search(response.text) if response.headers.get("content-type", "").startswith("text/html") else None
        if found:
            self.csrf = found.group(1)
        self.last = response
        return response

    async def get(self, path: str, **params: str) -> httpx.Response:
        # No params: keep the query of the path (a redirect's location)
        return self._keep(await self.http.get(path, params=params or None, headers=self._headers()))

    async def post(self, path: str, data: dict[str, Any], *, csrf: str | None = None) -> httpx.Response:
        form = {"csrf": self.csrf if csrf is None else csrf, "key": "k" + str(id(data)), **data}
        return self._keep(await self.http.post(path, data=form, headers=self._headers()))

    async def follow(self, response: httpx.Response) -> httpx.Response:
        assert response.status_code == 303, response.text
        return await self.get(response.headers["location"])

    async def sign_in(self, name: str, password: str = PASSWORD) -> httpx.Response:
        await self.get("/login")
        return await self.post("/login", {"name": name, "password": password, "next": "/search"})


async def console_app(settings: Settings, clock: ManualClock) -> App:
    clock.advance(ms=NOV_18 * 1000 - clock.now_ms())
    app = App(
        replace(settings, console_address="127.0.0.1:0", console_secret="console-test-secret-0123456789"),
        clock=clock,
        run_background=False,
    )
    await app.start()
    return app


async def add_staff(app: App, name: str, *roles: str) -> None:
    assert app.redis is not None
    await StaffBook(app.redis).add(name, PASSWORD, roles, NOV_18)
