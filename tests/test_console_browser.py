"""The console in a real browser: Debian's Chromium driven by Selenium against the service under gunicorn and the
fake Genesys. An operator logs in with Genesys, filters the events, opens one, previews and runs a forced replay,
and sees the result and the audit line. It saves the README's screenshots under docs/.

Skipped when chromium and chromedriver are not installed (`apt-get install chromium chromium-driver`; .ci/run
installs them). The browser is never downloaded at run time (Selenium Manager is kept offline)."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import ROOT
from tests.support.fake_genesys import FakeGenesys
from tests.support.servers import (
    Service,
    connect_user,
    free_port,
    service_env,
    user_client_env,
    wait_final,
    wait_until,
    write_config,
)
from webhook.store import Store

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
DOCS = ROOT / "docs"
WAIT = 20.0


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("the browser test needs Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver; .ci/run installs them)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not fetch a browser or a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,900", "--force-device-scale-factor=1", "--lang=en-GB"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=DriverService(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def body(agent: str, status: str, *, previous: str = "open", ticket: str, age: float = 0.0) -> bytes:
    occurred = datetime.now(UTC) - timedelta(seconds=age)
    return json.dumps({"event_id": f"evt-{uuid.uuid4().hex[:12]}", "occurred_at": occurred.isoformat(),
                       "ticket": {"id": ticket, "status": status, "previous_status": previous},
                       "agent": {"email": agent}}).encode()


def screenshot(driver: Any, name: str) -> Path:
    """Save the whole page (the window stretched to its height) as docs/<name>.png."""
    height, chrome = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
    driver.set_window_size(1280, min(int(height) + int(chrome), 2400))
    DOCS.mkdir(exist_ok=True)
    path = DOCS / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    driver.set_window_size(1280, 900)
    return path


def click(driver: Any, xpath: str) -> None:
    """Click an element that loads a new page, and wait until the new page has replaced the old one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.XPATH, xpath).click()
    WebDriverWait(driver, WAIT).until(expected_conditions.staleness_of(old))


def test_an_operator_logs_in_filters_opens_replays_and_sees_the_audit(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with FakeGenesys() as fake:
        ops = fake.add_user("ops.olga@example.com", "Ops Olga")
        jane = fake.add_user("jane.agent@example.com", "Jane Agent")
        fake.add_user("omar.agent@example.com", "Omar Agent")  # known to Genesys, on no call
        fake.start_call(jane)
        port = free_port()
        config = write_config(tmp_path / "webhook.toml", requests_per_minute=0)
        config.write_text(config.read_text() + '\n[console]\noperators = ["ops.olga@example.com"]\n')
        env = service_env(fake, f"sqlite:///{tmp_path / 'webhook.db'}", config, **user_client_env(fake, port),
                          SECRET_KEY="browser-test-session-key-" + "k" * 32)
        service = Service(env, tmp_path, port=port)
        with service:
            store = Store.from_url(env["DATABASE_URL"])
            assert connect_user(fake, service.url, jane).status_code == 200
            sent = [
                ("jane.agent@example.com", "payment_in_progress", "open", "48213", 0.0),
                ("jane.agent@example.com", "open", "payment_in_progress", "48213", 0.0),
                ("omar.agent@example.com", "card_capture", "open", "50117", 0.0),
                ("jane.agent@example.com", "solved", "open", "48190", 0.0),
                ("jane.agent@example.com", "payment_in_progress", "open", "48241", 600.0),
            ]
            ids = []
            for agent, status, previous, ticket, age in sent:
                answer = service.post("helpdesk", body(agent, status, previous=previous, ticket=ticket, age=age))
                assert answer.status_code == 202, answer.text
                ids.append(answer.json()["accepted"][0]["id"])
                wait_final(store, ids[-1], WAIT)
            states = [store.get(pk).state for pk in ids]  # type: ignore[union-attr]
            assert states == ["applied", "applied", "no_call", "skipped", "expired"], states
            expired = ids[-1]
            patches_before = len(fake.patches)

            # Log in with Genesys: the console's button, the fake's login (approving as ops), back to the console.
            fake.consent_as(ops)
            browser.get(f"{service.url}/console/events")
            assert "/console/login" in browser.current_url
            browser.find_element(By.XPATH, "//button[contains(., 'Log in with Genesys')]").click()
            wait_until(lambda: browser.current_url.startswith(f"{service.url}/console/events"), WAIT,
                       message="back on the events page after the Genesys login")
            assert store.connections()[0].user_id == jane and len(store.connections()) == 1  # no connection for ops
            rows = browser.find_elements(By.CSS_SELECTOR, "table.events tbody tr")
            assert len(rows) == 5
            screenshot(browser, "console-events")
            browser.get(f"{service.url}/console/")
            assert "database ok" in browser.find_element(By.TAG_NAME, "main").text
            assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")) == 4  # applied, no_call, ...
            screenshot(browser, "console-overview")
            browser.back()

            # Filter: state expired.
            Select(browser.find_element(By.NAME, "state")).select_by_value("expired")
            click(browser, "//button[.='Filter']")
            rows = browser.find_elements(By.CSS_SELECTOR, "table.events tbody tr")
            assert [r.find_element(By.CSS_SELECTOR, "td:nth-child(2)").text for r in rows] == [str(expired)]

            # An applied event's detail, for the README: the rule, the timeline with the Genesys attempts.
            browser.get(f"{service.url}/console/events/{ids[0]}")
            page = browser.find_element(By.TAG_NAME, "main").text
            assert "rule 1 (card details are being taken)" in page and "PATCH /api/v2/conversations/calls/" in page
            assert f"agent:{jane}" in page
            screenshot(browser, "console-event")

            # Open the expired one from the filtered list, preview a replay, then choose force and run it.
            browser.back()
            click(browser, f"//a[.='{expired}']")
            click(browser, "//button[contains(., 'Preview a replay')]")
            preview = browser.find_element(By.TAG_NAME, "main").text
            assert "Replay 1 event(s)? Preview" in preview
            assert re.search(r"event is 6\d\d s old \(limit 120 s\)", preview), preview
            assert len(fake.patches) == patches_before  # a preview calls nothing
            click(browser, "//button[contains(., 'Preview with force')]")
            forced = browser.find_element(By.TAG_NAME, "main").text
            assert "Force skips the age guard" in forced and "forced past the age and ordering guards" in forced
            click(browser, "//button[contains(., 'Replay 1 event(s) with force')]")
            result = browser.find_element(By.TAG_NAME, "main").text
            assert "Replayed 1 event(s) with force" in result and "1 replayed, 0 failed" in result
            assert f"{expired} mute expired applied" in result
            screenshot(browser, "console-replay")
            assert len(fake.patches) == patches_before + 1

            # The audit line, on the event's page.
            click(browser, f"//a[.='{expired}']")
            audit = browser.find_element(By.XPATH, "//h2[.=\"Operators' actions\"]/following-sibling::table[1]").text
            assert "ops.olga@example.com replay_forced expired -> applied: muted" in audit
            [line] = store.audit_lines(event=expired)
            assert (line.operator, line.action) == ("ops.olga@example.com", "replay_forced")
            store.close()
