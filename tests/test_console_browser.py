"""The console in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
installed by ``make browser``), driven with Selenium: the application form walked with
the keyboard alone from empty to an active line, the invoice, a dispute and a payment,
with what each page shows asserted, axe-core (``make browser`` fetches it from npm) run on
every page, and screenshots saved (``CHARGING_CONSOLE_SCREENSHOTS=<dir>`` keeps them).

Skipped only when Chromium cannot be had outside CI; in CI (``CI`` set) a missing
browser fails the test instead."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from charging.clock import ManualClock
from charging.server import App
from charging.settings import Settings
from tests.console_client import PASSWORD, add_staff, console_app

ROOT = Path(__file__).resolve().parent.parent
AXE = ROOT / "var" / "cache" / "axe-core" / "axe.min.js"
DAY = 86_400

APPLICATION = {
    "contract": "POSTPAID",
    "plan_id": "mobile-postpaid",
    "msisdn": "491701234567",
    "imsi": "262011234567890",
    "applicant.given_name": "Anna",
    "applicant.family_name": "Muster",
    "applicant.date_of_birth": "1990-05-17",
    "address.street": "Hauptstr. 1",
    "address.postal_code": "10115",
    "address.city": "Berlin",
    "address.country": "DE",
    "contact.email": "anna@example.org",
    "identity_document.type": "PASSPORT",
    "identity_document.number": "L898902C36",
    "identity_document.issuing_country": "DE",
    "identity_document.expiry_date": "2030-01-01",
    "credit_history.tenure_months": "36",
    "credit_history.monthly_income_micros": "4000000000",
}


def chromium_or_skip() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser and driver and AXE.exists():
        return browser, driver
    missing = "chromium and chromium-driver (make browser)" if not (browser and driver) else f"axe-core at {AXE}"
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests need {missing}")
    pytest.skip(f"the browser tests need {missing}")


@pytest.fixture
def chrome() -> Iterator[Any]:
    browser, driver_path = chromium_or_skip()
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
async def console(settings: Settings, clock: ManualClock) -> AsyncIterator[App]:
    app = await console_app(settings, clock)
    yield app
    await app.stop()


class Walk:
    """The browser, called off the event loop (the console serves on this loop)."""

    def __init__(self, driver: Any, base: str, shots: Path) -> None:
        self.driver = driver
        self.base = base
        self.shots = shots
        self.axe = AXE.read_text()

    async def do(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def open(self, path: str) -> None:
        await self.do(self.driver.get, self.base + path)

    async def text(self) -> str:
        return str(await self.do(lambda: self.driver.find_element("tag name", "main").text))

    async def check(self, name: str) -> None:
        """axe-core on the page: no serious or critical violation; and a screenshot."""
        await self.do(self.driver.save_screenshot, str(self.shots / f"{name}.png"))

        def run_axe() -> list[str]:
            self.driver.execute_script(self.axe)
            found: list[str] = self.driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "axe.run(document).then(r => done(r.violations"
                ".filter(v => v.impact === 'serious' || v.impact === 'critical')"
                ".map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))));"
            )
            return found

        assert await self.do(run_axe) == [], name

    async def keys(self, *keys: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        await self.do(lambda: ActionChains(self.driver).send_keys(*keys).perform())

    async def select_all(self) -> None:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        await self.do(
            lambda: ActionChains(self.driver).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL).perform()
        )

    async def focused(self) -> Any:
        return await self.do(lambda: self.driver.switch_to.active_element)

    async def fill_by_keyboard(self, values: dict[str, str]) -> list[str]:
        """Tab through a freshly loaded page from the top (the skip link first), typing
        each field's value where ``values`` has one, until the submit button; press Enter
        on it. Returns the fields visited."""
        from selenium.webdriver.common.keys import Keys

        visited: list[str] = []
        for _ in range(120):
            await self.keys(Keys.TAB)
            element = await self.focused()
            name = await self.do(element.get_attribute, "name") or ""
            tag = await self.do(lambda el=element: el.tag_name)
            if tag == "button" and (await self.do(lambda el=element: el.text)) == "Submit application":
                old = await self.do(lambda: self.driver.find_element("tag name", "html"))
                await self.keys(Keys.ENTER)
                await self.loaded(old)
                return visited
            visited.append(name)
            if name in values:
                if tag == "input":
                    await self.select_all()
                await self.keys(values[name])
        raise AssertionError("the submit button was never reached with Tab")

    async def loaded(self, old: Any) -> None:
        """Wait for the next page to replace ``old`` (a submitted form)."""
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        await self.do(lambda: WebDriverWait(self.driver, 20).until(expected_conditions.staleness_of(old)))

    async def until(self, css: str, text: str) -> None:
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        def wait() -> None:
            WebDriverWait(self.driver, 20).until(
                expected_conditions.text_to_be_present_in_element(("css selector", css), text)
            )

        await self.do(wait)

    async def submit_form(self, action_suffix: str, fields: dict[str, str], button: str) -> None:
        def fill() -> None:
            form = self.driver.find_element("css selector", f"form[action$='{action_suffix}']")
            for name, value in fields.items():
                element = form.find_element("name", name)
                if element.tag_name == "select":
                    from selenium.webdriver.support.ui import Select

                    Select(element).select_by_visible_text(value)
                else:
                    element.clear()
                    element.send_keys(value)
            form.find_element("xpath", f".//button[normalize-space()='{button}']").click()

        old = await self.do(lambda: self.driver.find_element("tag name", "html"))
        await self.do(fill)
        await self.loaded(old)


@pytest.mark.timeout(300)  # a browser on a shared machine: slow, never timed
async def test_a_representative_walks_the_console_in_a_browser(
    console: App, chrome: Any, clock: ManualClock, tmp_path: Path
) -> None:
    assert console.console is not None
    await add_staff(console, "carla", "crm", "billing", "operator")
    keep = os.environ.get("CHARGING_CONSOLE_SCREENSHOTS")
    shots = Path(keep) if keep else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    walk = Walk(chrome, f"http://localhost:{console.console.port}", shots)

    await walk.open("/search")
    assert "Sign in" in await walk.text()
    await walk.check("login")
    await walk.submit_form("/login", {"name": "carla", "password": PASSWORD}, "Sign in")
    assert "Find a customer" in await walk.text()  # the Secure, HttpOnly cookie works on localhost
    await walk.check("search")

    # The application form, by keyboard alone: first sent empty, every problem named.
    await walk.open("/apply")
    await walk.check("apply")
    await walk.fill_by_keyboard({})
    text = await walk.text()
    assert "problem(s)" in text and "applicant: is required" in text, text[:600]
    await walk.check("apply-errors")
    visited = await walk.fill_by_keyboard(APPLICATION)
    assert set(APPLICATION) <= set(visited)

    # The order, followed live until the network has activated the line.
    text = await walk.text()
    assert "IN_PROGRESS" in text and "Credit class A" in text and "mobile-postpaid" in text
    await walk.check("order")
    assert console.worker is not None
    await console.worker.reconcile_once()
    await walk.until(".line-state", "active")  # htmx polling, no reload
    assert "COMPLETED" in await walk.text()

    # Search by number, the customer page; a month later, the invoice.
    await walk.open("/search?by=number&q=491701234567")
    await walk.do(lambda: chrome.find_element("css selector", "main table a").click())
    text = await walk.text()
    assert "Anna Muster" in text and "mobile-postpaid" in text and "active" in text
    clock.advance(seconds=31 * DAY)
    assert console.billing is not None and (await console.billing.runs.run()).issued == 1
    await walk.do(chrome.refresh)
    text = await walk.text()
    number = re.search(r"PDF of invoice ([\w-]+)", text)
    assert number, text

    # A dispute about the invoice, then a payment.
    await walk.submit_form(
        "/disputes", {"invoice": number.group(1), "amount": "1.50", "reason": "charged twice"}, "Open dispute"
    )
    text = await walk.text()
    assert f"opened on invoice {number.group(1)}" in text and "charged twice" in text and "OPEN" in text
    await walk.submit_form("/payments", {"amount": "10", "channel": "CARD", "reference": "pos-1"}, "Record payment")
    text = await walk.text()
    assert "Payment of 10.00 recorded" in text and "pos-1" in text
    await walk.check("customer")

    await walk.open("/operations")
    assert "Bill runs" in await walk.text()
    await walk.check("operations")
