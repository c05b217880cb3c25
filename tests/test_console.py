"""The operators' console through the Flask test client: who may enter (password, Genesys operators, session expiry,
CSRF), every page and action (filters, pagination, replay preview and run, agents, connections, rules, overview,
audit), and hostile stored fields shown escaped."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from werkzeug.test import TestResponse

from tests.support.app import CONFIG, SECRETS, SignedPost, make_settings
from tests.support.clocks import T0, Clock
from tests.support.fake_genesys import FakeGenesys
from webhook import create_app
from webhook.config import Console, Settings
from webhook.errors import ConfigError
from webhook.genesys.model import Attempt, Connection
from webhook.store import Store

PASSWORD = "correct horse battery staple"
SECRET = "s" * 48
PUBLIC = "https://bridge.example.com"
TOKEN_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    """The conftest settings with the console on: a password and a session key; idle time 30 minutes."""
    return replace(make_settings(sqlite_url), console=Console(password=PASSWORD, secret_key=SECRET))


def csrf(client: FlaskClient, path: str = "/console/login") -> str:
    page = client.get(path)
    match = TOKEN_RE.search(page.get_data(as_text=True))
    assert match, page.get_data(as_text=True)[:500]
    return match.group(1)


def log_in(client: FlaskClient, name: str = "Ops Olga", base: str = "") -> TestResponse:
    token = csrf(client, f"{base}/console/login")
    answer = client.post(f"{base}/console/login/password",
                         data={"name": name, "password": PASSWORD, "csrf_token": token})
    assert answer.status_code == 303, answer.get_data(as_text=True)
    return answer


@pytest.fixture
def operator(client: FlaskClient) -> FlaskClient:
    """A client logged in with the console password."""
    log_in(client)
    return client


def generic(event_id: str, *, status: str = "payment_in_progress", agent: str = "jane.agent@example.com",
            ticket: str = "48213", previous: str = "open", occurred: str = "2026-11-23T10:00:00Z") -> str:
    return json.dumps({"event_id": event_id, "occurred_at": occurred,
                       "ticket": {"id": ticket, "status": status, "previous_status": previous},
                       "agent": {"email": agent}})


def post_events(signed_post: SignedPost, count: int, **fields: Any) -> list[int]:
    ids = []
    for n in range(count):
        answer = signed_post("helpdesk", generic(f"evt_{n}_{fields.get('ticket', 't')}", **fields))
        assert answer.status_code == 202, answer.get_json()
        ids.append(answer.get_json()["accepted"][0]["id"])
    return ids


def text(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def counts(response: TestResponse) -> list[str]:
    block = text(response).split('<p class="counts">', 1)[1].split('<span class="refresh">', 1)[0]
    return [re.sub(r"\s+", " ", c).strip() for c in re.findall(r"<a [^>]*>([^<]+)</a>", block)]


def page_ids(response: TestResponse) -> list[int]:
    return [int(i) for i in re.findall(r'name="id" value="(\d+)" aria-label', text(response))]


# --- on or off, and who may enter --------------------------------------------------------------------------------


def test_with_neither_operators_nor_a_password_the_console_is_off(sqlite_url: str, clock: Clock) -> None:
    app = create_app(make_settings(sqlite_url), clock=clock, background=False)
    client = app.test_client()
    for path in ("/console/", "/console/login", "/console/events", "/console/static/console.css"):
        answer = client.get(path)
        assert (answer.status_code, answer.get_json()["error"]) == (404, "not_found"), path
    assert client.post("/console/login/password", data={"password": PASSWORD}).status_code == 404
    app.extensions["webhook"].store.close()


@pytest.mark.parametrize(("env", "problem"), [
    ({"CONSOLE_PASSWORD": PASSWORD}, "environment: SECRET_KEY: unset; the console's sessions are signed with it"),
    ({"CONSOLE_PASSWORD": PASSWORD, "SECRET_KEY": "short"}, "environment: SECRET_KEY: shorter than 32 characters"),
    ({"CONSOLE_PASSWORD": "hunter2", "SECRET_KEY": SECRET}, "environment: CONSOLE_PASSWORD: shorter than 12"),
])
def test_console_settings_problems_are_named(sqlite_url: str, env: dict[str, str], problem: str) -> None:

    with pytest.raises(ConfigError) as caught:
        Settings.from_env(SECRETS | {"GENESYS_DRY_RUN": "true", "DATABASE_URL": sqlite_url} | env, config_path=CONFIG)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_operators_without_the_user_client_are_a_problem(tmp_path: Any, sqlite_url: str) -> None:

    config = tmp_path / "webhook.toml"
    config.write_text(Path(CONFIG).read_text() + '\n[console]\noperators = ["ops@example.com"]\nidle_minutes = 5\n')
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(SECRETS | {"GENESYS_DRY_RUN": "true", "DATABASE_URL": sqlite_url, "SECRET_KEY": SECRET},
                          config_path=str(config))
    assert [p for p in caught.value.problems if "console.operators" in p] == [
        f"{config}: console.operators: operators log in with Genesys through the authorization-code client: set "
        'GENESYS_USER_CLIENT_ID and _SECRET (README: "Acting as a user"), or set CONSOLE_PASSWORD and remove the '
        "operators"]


def test_console_settings_are_read(tmp_path: Any, sqlite_url: str) -> None:

    config = tmp_path / "webhook.toml"
    config.write_text(Path(CONFIG).read_text() + '\n[console]\noperators = ["Ops@Example.com", "ABC"]\n'
                      'idle_minutes = 5\n')
    user_client = {"GENESYS_USER_CLIENT_ID": "id", "GENESYS_USER_CLIENT_SECRET": "secret", "PUBLIC_URL": PUBLIC,
                   "GENESYS_REGION": "mypurecloud.ie", "TOKEN_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    settings = Settings.from_env(SECRETS | user_client | {"GENESYS_DRY_RUN": "true", "DATABASE_URL": sqlite_url,
                                                          "SECRET_KEY": SECRET, "CONSOLE_PASSWORD": PASSWORD},
                                 config_path=str(config))
    assert settings.console == Console(("ops@example.com", "abc"), PASSWORD, SECRET, 300.0)
    assert "correct horse" not in repr(settings) and SECRET not in repr(settings)


def test_a_visitor_is_sent_to_the_login_page(client: FlaskClient) -> None:
    answer = client.get("/console/events?state=failed")
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/console/login?next=/console/events?state%3Dfailed"
    login = client.get(answer.headers["Location"])
    assert login.status_code == 200 and "Log in with the password" in text(login)
    assert "Log in with Genesys" not in text(login)  # no operators listed, no user client
    assert 'name="next" value="/console/events?state=failed"' in text(login)


def test_the_password_logs_in_and_the_session_cookie_is_safe(client: FlaskClient, store: Store, clock: Clock) -> None:
    token = csrf(client)
    answer = client.post("/console/login/password",
                         data={"name": "Ops Olga", "password": PASSWORD, "csrf_token": token,
                               "next": "/console/events?state=failed"})
    assert (answer.status_code, answer.headers["Location"]) == (303, "/console/events?state=failed")
    [cookie] = [h for h in answer.headers.getlist("Set-Cookie") if h.startswith("crm_mute_bridge_console=")]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # PUBLIC_URL is not https here (see the https test below)
    assert client.get("/console/events").status_code == 200
    [line] = store.audit_lines()
    assert (line.operator, line.action, line.at) == ("password:Ops Olga", "login", clock())


def test_a_return_address_on_another_site_is_ignored(client: FlaskClient) -> None:
    token = csrf(client)
    for target in ("https://evil.example/", "//evil.example/console/", "/console/\\evil"):
        answer = client.post("/console/login/password",
                             data={"name": "x", "password": PASSWORD, "csrf_token": token, "next": target})
        assert (answer.status_code, answer.headers["Location"]) == (303, "/console/"), target
        token = csrf(client)


def test_wrong_passwords_are_refused_then_slowed(client: FlaskClient, clock: Clock, store: Store) -> None:
    token = csrf(client)

    def attempt(password: str) -> TestResponse:
        return client.post("/console/login/password",
                           data={"name": "x", "password": password, "csrf_token": token})

    for _ in range(3):
        wrong = attempt("nope")
        assert wrong.status_code == 401 and "Wrong password." in text(wrong)
    # From the third failure on, each attempt must wait (1 s, then 2 s, 4 s, ...), even with the right password.
    held = attempt(PASSWORD)
    assert held.status_code == 429 and held.headers["Retry-After"] == "1"
    assert "wait 1 s before trying again" in text(held)
    clock.advance(1.5)
    assert attempt("nope").status_code == 401
    assert attempt(PASSWORD).status_code == 429
    clock.advance(2)
    assert attempt(PASSWORD).status_code == 303
    assert [a.action for a in store.audit_lines()] == ["login"]


def test_the_password_needs_a_name_for_the_audit(client: FlaskClient) -> None:
    token = csrf(client)
    answer = client.post("/console/login/password",
                         data={"name": " ", "password": PASSWORD, "csrf_token": token})
    assert answer.status_code == 400 and "Give your name" in text(answer)
    assert client.get("/console/events").status_code == 303


def test_a_post_without_the_csrf_token_is_refused(operator: FlaskClient, signed_post: SignedPost,
                                                  store: Store) -> None:
    [pk] = post_events(signed_post, 1)
    before = store.get(pk)
    for data in ({"id": str(pk)}, {"id": str(pk), "csrf_token": "forged"}):
        answer = operator.post("/console/replay/run", data=data)
        assert answer.status_code == 400, text(answer)
        assert "This form cannot be accepted" in text(answer)
    assert store.get(pk) == before and store.audit_lines(event=pk) == []
    fresh = operator.application.test_client()  # the login form too
    assert fresh.post("/console/login/password", data={"name": "x", "password": PASSWORD}).status_code == 400


def test_the_session_ends_after_the_idle_time(operator: FlaskClient, clock: Clock) -> None:
    clock.advance(29 * 60)
    assert operator.get("/console/events").status_code == 200  # activity moves the idle time on
    clock.advance(29 * 60)
    assert operator.get("/console/agents").status_code == 200
    clock.advance(30 * 60 + 1)
    answer = operator.get("/console/events")
    assert (answer.status_code, answer.headers["Location"]) == (303, "/console/login?expired=1")
    assert "Your session ended" in text(operator.get(answer.headers["Location"]))
    assert operator.get("/console/events").status_code == 303  # the session is gone, not only refused once


def test_the_session_ends_twelve_hours_after_login_however_busy(operator: FlaskClient, clock: Clock) -> None:
    for _ in range(24):
        clock.advance(29 * 60)
        assert operator.get("/console/events").status_code == 200
    clock.advance(25 * 60)  # 12 h 1 min after the login, 25 minutes after the last request
    answer = operator.get("/console/events")
    assert (answer.status_code, answer.headers["Location"]) == (303, "/console/login?expired=1")


def test_logout_ends_the_session(operator: FlaskClient) -> None:
    token = csrf(operator, "/console/events")
    assert operator.post("/console/logout", data={"csrf_token": token}).headers["Location"] == "/console/login"
    assert operator.get("/console/events").status_code == 303


def test_pages_send_the_security_headers(operator: FlaskClient) -> None:
    for path in ("/console/", "/console/events", "/console/login", "/console/rules"):
        answer = operator.get(path)
        assert answer.headers["X-Frame-Options"] == "DENY", path
        assert answer.headers["Referrer-Policy"] == "same-origin"
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["Content-Security-Policy"] == (
            "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'; "
            "form-action 'self'")
    css = operator.get("/console/static/console.css")
    assert css.status_code == 200 and css.mimetype == "text/css" and b"--applied" in css.data


# --- events -------------------------------------------------------------------------------------------------------


def test_events_page_filters_and_counts(operator: FlaskClient, signed_post: SignedPost, store: Store,
                                        clock: Clock) -> None:
    jane = post_events(signed_post, 3, ticket="100")
    omar = post_events(signed_post, 2, ticket="200", agent="omar.agent@example.com", status="open")
    clock.advance(1200)  # within the session's idle time
    later = post_events(signed_post, 1, ticket="300", occurred="2026-11-23T10:20:00Z")
    page = operator.get("/console/events")
    assert page.status_code == 200
    assert page_ids(page) == sorted(jane + omar + later, reverse=True)
    assert counts(page) == ["all 6", "skipped 2", "dry_run 4"]  # status open from open: no rule acts
    assert page_ids(operator.get("/console/events?agent=omar.agent@example.com")) == sorted(omar, reverse=True)
    assert page_ids(operator.get("/console/events?ticket=100")) == sorted(jane, reverse=True)
    assert page_ids(operator.get("/console/events?since=15m")) == later
    assert page_ids(operator.get("/console/events?source=helpdesk&ticket=200")) == sorted(omar, reverse=True)
    assert page_ids(operator.get("/console/events?source=zendesk")) == []
    store.finish(jane[0], state="failed", detail="boom", now=clock())
    failed = operator.get("/console/events?state=failed")
    assert page_ids(failed) == [jane[0]]
    assert counts(failed) == ["all 6", "skipped 2", "failed 1", "dry_run 3"]  # counted without the state filter


@pytest.mark.parametrize(("query", "problem"), [
    ("state=lost", "state &#39;lost&#39; is not one of received, processing, applied"),
    ("since=yesterday", "since: &#39;yesterday&#39; is neither a duration such as 1h or 30d nor an ISO-8601 time"),
    ("before=12x", "before must be an event id (a whole number), got &#39;12x&#39;"),
])
def test_a_bad_filter_is_named(operator: FlaskClient, query: str, problem: str) -> None:
    answer = operator.get(f"/console/events?{query}")
    assert answer.status_code == 400 and problem in text(answer), text(answer)


def test_events_page_paginates_newest_first(operator: FlaskClient, signed_post: SignedPost) -> None:
    ids = sorted(post_events(signed_post, 57), reverse=True)
    first = operator.get("/console/events")
    assert page_ids(first) == ids[:50]
    assert f'href="/console/events?before={ids[49]}"' in text(first) and "Newer" not in text(first)
    second = operator.get(f"/console/events?before={ids[49]}")
    assert page_ids(second) == ids[50:]
    assert "Older" not in text(second) and f'href="/console/events?after={ids[50]}"' in text(second)
    back = operator.get(f"/console/events?after={ids[50]}")
    assert page_ids(back) == ids[:50]


def test_auto_refresh_is_a_switch(operator: FlaskClient) -> None:
    assert "http-equiv=\"refresh\"" not in text(operator.get("/console/events?state=failed"))
    on = text(operator.get("/console/events?state=failed&refresh=1"))
    assert '<meta http-equiv="refresh" content="10">' in on
    assert 'href="/console/events?state=failed">stop</a>' in on


HOSTILE_AGENT = '<script>alert("agent")</script>@example.com'


def test_hostile_fields_are_escaped_everywhere(operator: FlaskClient, signed_post: SignedPost,
                                               store: Store) -> None:
    body = json.dumps({"event_id": "evt_<img src=x onerror=alert(1)>", "occurred_at": "2026-11-23T10:00:00Z",
                       "ticket": {"id": "</td><script>t()</script>", "status": "open\x1b[31m\u202eevil",
                                  "previous_status": "<b>bold</b>"},
                       "agent": {"email": HOSTILE_AGENT}, "note": "</pre><script>body()</script>"})
    answer = signed_post("helpdesk", body, headers={"X-Custom": "<i>header</i>"})
    [pk] = [a["id"] for a in answer.get_json()["accepted"]]
    pages = [text(operator.get(p)) for p in ("/console/events", f"/console/events/{pk}", "/console/agents")]
    for page in pages:
        assert "<script>" not in page and "<img" not in page and "<b>bold" not in page and "<i>header" not in page
        assert "\x1b" not in page and "\u202e" not in page
    events, detail, agents = pages
    assert "&lt;script&gt;alert(&#34;agent&#34;)&lt;/script&gt;@example.com" in agents
    assert "open\\x1b[31m\\u202eevil" in events and "open\\x1b[31m\\u202eevil" in detail
    assert "&lt;/pre&gt;&lt;script&gt;body()&lt;/script&gt;" in detail  # the body, pretty-printed and escaped
    assert "&lt;i&gt;header&lt;/i&gt;" in detail
    assert "evt_&lt;img src=x onerror=alert(1)&gt;" in detail


def test_event_detail_shows_fields_rule_timeline_body_and_headers(operator: FlaskClient, signed_post: SignedPost,
                                                                  store: Store, clock: Clock) -> None:
    answer = signed_post("helpdesk", generic("evt_detail"), headers={"X-Request-Id": "req-77"})
    pk = answer.get_json()["accepted"][0]["id"]
    store.add_attempt(pk, Attempt("PATCH", "/api/v2/conversations/calls/c1/participants/p1", 202, None,
                                  "corr-123", 41.6, None, "agent:50fcd33c", at=clock() + timedelta(seconds=1)))
    page = text(operator.get(f"/console/events/{pk}"))
    assert "rule 1 (card details are being taken)" in page and "<dt>action</dt><dd>mute" in page
    assert "jane.agent@example.com" in page and "48213" in page and "payment_in_progress" in page
    rows = re.findall(r"<tr[^>]*>\s*<td class=\"nowrap\">([^<]+)</td>\s*<td>(.*?)</td>", page, re.S)
    steps = [(when, re.sub(r"<[^>]+>", "", step).strip()) for when, step in rows]
    assert steps == [("2026-11-23 10:00:00.000Z", "received"), ("2026-11-23 10:00:00.000Z", "claimed"),
                     ("2026-11-23 10:00:00.000Z", "dry_run"), ("2026-11-23 10:00:01.000Z", "Genesys")]
    assert "PATCH /api/v2/conversations/calls/c1/participants/p1" in page
    assert "corr-123" in page and "agent:50fcd33c" in page and "<td>42</td>" in page
    assert '  &#34;ticket&#34;: {\n    &#34;id&#34;: &#34;48213&#34;' in page  # pretty-printed
    assert "req-77" in page and "webhook-signature" not in page.lower()
    assert operator.get("/console/events/999999").status_code == 404


# --- replay -------------------------------------------------------------------------------------------------------


def test_replay_previews_first_then_runs_and_audits(operator: FlaskClient, signed_post: SignedPost, store: Store,
                                                    clock: Clock, runner: FlaskCliRunner) -> None:
    ids = post_events(signed_post, 2)
    clock.advance(600)  # now older than max_event_age_seconds
    token = csrf(operator, "/console/events")
    preview = operator.post("/console/replay", data={"id": [str(i) for i in ids], "scope": "selected",
                                                     "csrf_token": token})
    page = text(preview)
    assert preview.status_code == 200 and "Replay 2 event(s)? Preview" in page
    assert "<th>event</th><th>action</th><th>old state</th><th>new state</th><th>detail</th>" in page
    assert page.count("event is 600 s old (limit 120 s)") == 2 and "2 previewed, 0 failed" in page
    assert [store.get(i).state for i in ids] == ["dry_run", "dry_run"]  # type: ignore[union-attr]
    assert store.audit_lines(event=ids[0]) == []
    assert "Force</strong> skips" not in page and "Preview with force instead" in page

    run = operator.post("/console/replay/run", data={"id": [str(i) for i in ids], "force": "0",
                                                     "csrf_token": token})
    page = text(run)
    assert run.status_code == 200 and "Replayed 2 event(s)" in page and "2 replayed, 0 failed" in page
    assert [store.get(i).state for i in ids] == ["expired", "expired"]  # type: ignore[union-attr]
    [line] = store.audit_lines(event=ids[0])
    assert (line.operator, line.action, line.target, line.at) == ("password:Ops Olga", "replay", f"event {ids[0]}",
                                                                 clock())
    assert line.detail.startswith("dry_run -> expired: event is 600 s old")
    assert "password:Ops Olga" in text(operator.get(f"/console/events/{ids[0]}"))
    listed = runner.invoke(args=["audit", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [(a["action"], a["event"]) for a in json.loads(listed.output)] == [
        ("replay", ids[0]), ("replay", ids[1]), ("login", None)]  # newest first; the replay ran newest event first
    table = runner.invoke(args=["audit", "list", "--event", str(ids[0])])
    assert "password:Ops Olga" in table.output and "replay" in table.output


def test_forced_replay_is_a_separate_choice_that_says_what_it_skips(operator: FlaskClient, signed_post: SignedPost,
                                                                    store: Store, clock: Clock) -> None:
    [pk] = post_events(signed_post, 1)
    clock.advance(600)
    token = csrf(operator, "/console/events")
    preview = text(operator.post("/console/replay", data={"id": str(pk), "force": "1", "csrf_token": token}))
    assert "Preview with force" in preview and "Preview with force instead" not in preview
    assert "<strong>Force</strong> skips the age guard" in preview and "the ordering guard" in preview
    assert "forced past the age and ordering guards" in preview
    assert 'name="force" value="1"' in preview
    run = operator.post("/console/replay/run", data={"id": str(pk), "force": "1", "csrf_token": token})
    assert "Replayed 1 event(s) with force" in text(run)
    record = store.get(pk)
    assert record is not None and record.state == "dry_run"
    assert "forced past the age and ordering guards" in record.detail
    assert [a.action for a in store.audit_lines(event=pk)] == ["replay_forced"]


def test_replay_of_everything_a_filter_matches(operator: FlaskClient, signed_post: SignedPost, store: Store,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    post_events(signed_post, 2, ticket="100")
    other = post_events(signed_post, 3, ticket="200")
    token = csrf(operator, "/console/events")
    preview = text(operator.post("/console/replay", data={"scope": "filter", "ticket": "200", "csrf_token": token}))
    confirm = preview.split('class="confirm"', 2)[1]
    assert re.findall(r'name="id" value="(\d+)"', confirm) == [str(i) for i in sorted(other, reverse=True)]
    monkeypatch.setattr("webhook.console.pages.MAX_REPLAY", 2)
    refused = operator.post("/console/replay", data={"scope": "filter", "ticket": "200", "csrf_token": token})
    assert refused.status_code == 400 and "the console replays at most 2 at once" in text(refused)
    nothing = operator.post("/console/replay", data={"scope": "selected", "csrf_token": token})
    assert nothing.status_code == 400 and "no event is selected" in text(nothing)


# --- agents, rules, overview ---------------------------------------------------------------------------------------


def test_agents_page_shows_last_event_applied_action_and_microphone(operator: FlaskClient, signed_post: SignedPost,
                                                                    store: Store, clock: Clock) -> None:
    jane = post_events(signed_post, 2, ticket="1")
    omar = post_events(signed_post, 1, ticket="2", agent="omar.agent@example.com")
    store.finish(jane[0], state="applied", detail="muted", action="mute", now=clock())
    page = text(operator.get("/console/agents"))
    rows = re.findall(r"<tr>\s*<td class=\"cut\"><a[^>]*>([^<]+)</a></td>(.*?)</tr>", page, re.S)
    assert [agent for agent, _ in rows] == ["omar.agent@example.com", "jane.agent@example.com"]
    omar_row, jane_row = (re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", r)).strip() for _, r in rows)
    assert omar_row == f"{omar[0]} dry_run 0 s ago none unknown none"
    assert jane_row == f"{jane[1]} dry_run 0 s ago mute 0 s ago muted none"


def test_rules_page_says_which_rule_matches(operator: FlaskClient) -> None:
    page = text(operator.get("/console/rules?status=PAYMENT_IN_PROGRESS&from=open&source=helpdesk"))
    assert "(source helpdesk): <strong>mute</strong> (rule 1 (card details are being taken))" in page
    assert '<tr class="hit"><td>1</td>' in page
    none = text(operator.get("/console/rules?status=whatever"))
    assert "<strong>none</strong>" in none


def test_overview_shows_readiness_mode_oldest_and_the_charts(operator: FlaskClient, signed_post: SignedPost,
                                                             store: Store, clock: Clock) -> None:
    ids = post_events(signed_post, 3)
    store.finish(ids[0], state="applied", detail="muted", action="mute", now=clock() + timedelta(seconds=0.25))
    store.finish(ids[1], state="received", detail="", now=clock())
    clock.advance(45)
    page = text(operator.get("/console/"))
    assert "database ok" in page and "dry run" in page
    assert "received 45 s ago" in page
    assert "p50 250 ms · p95 250 ms (1 events)" in page
    assert re.findall(r'<rect class="s-(\w+)"', page) == ["applied", "dry_run", "unfinished"]
    assert '<polyline class="l-p50"' in page
    store.finish(ids[1], state="dry_run", detail="", now=clock())
    assert "none: every event is final" in text(operator.get("/console/"))


# --- Genesys: operators, connections ------------------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeGenesys]:
    with FakeGenesys() as fake:
        yield fake


def genesys_app(settings: Settings, fake: FakeGenesys, clock: Clock, *, operators: tuple[str, ...],
                password: str | None = None) -> Flask:
    genesys = replace(settings.genesys, user_client_id=fake.user_client_id,
                      user_client_secret=fake.user_client_secret, public_url=PUBLIC,
                      token_keys=(Fernet.generate_key().decode(),), api_url=fake.url, login_url=fake.url, region=None)
    console = Console(operators=operators, password=password, secret_key=SECRET)
    return create_app(replace(settings, genesys=genesys, console=console), clock=clock, background=False)


def public_client(app: Flask) -> FlaskClient:
    """A browser on the https PUBLIC_URL: over https, Flask-WTF also wants a same-origin Referer on each POST."""
    client = app.test_client()
    client.environ_base["HTTP_REFERER"] = f"{PUBLIC}/console/"
    return client


def genesys_login(client: FlaskClient, fake: FakeGenesys, user_id: str) -> TestResponse:
    """Press "Log in with Genesys", let the fake's login approve as user_id, and come back to the callback."""
    import requests

    fake.consent_as(user_id)
    token = csrf(client, f"{PUBLIC}/console/login")
    start = client.post(f"{PUBLIC}/console/login/genesys", data={"csrf_token": token})
    assert start.status_code == 303, text(start)
    back = requests.get(start.headers["Location"], allow_redirects=False, timeout=10)
    assert back.status_code == 302
    return client.get(back.headers["Location"])


def test_a_listed_operator_logs_in_with_genesys_and_no_connection_is_made(settings: Settings, fake: FakeGenesys,
                                                                          clock: Clock) -> None:
    ops = fake.add_user("ops.olga@example.com", "Ops Olga")
    app = genesys_app(settings, fake, clock, operators=("ops.olga@example.com",))
    client = public_client(app)
    login_page = text(client.get(f"{PUBLIC}/console/login"))
    assert "Log in with Genesys Cloud" in login_page and "Log in with the password" not in login_page
    answer = genesys_login(client, fake, ops)
    assert (answer.status_code, answer.headers["Location"]) == (303, "/console/")
    [cookie] = [h for h in answer.headers.getlist("Set-Cookie") if h.startswith("crm_mute_bridge_console=")]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie  # PUBLIC_URL is https
    store: Store = app.extensions["webhook"].store
    assert store.connections() == []  # a login is not an agent connection
    assert fake.code_exchanges == 1 and fake.revoked_tokens == 1  # its token was deleted at Genesys at once
    assert client.get(f"{PUBLIC}/console/events").status_code == 200
    assert [(a.operator, a.action) for a in store.audit_lines()] == [("ops.olga@example.com", "login")]
    store.close()


def test_a_genesys_user_not_listed_is_refused(settings: Settings, fake: FakeGenesys, clock: Clock) -> None:
    mallory = fake.add_user("mallory@example.com", "Mallory")
    app = genesys_app(settings, fake, clock, operators=("ops.olga@example.com",))
    client = public_client(app)
    answer = genesys_login(client, fake, mallory)
    page = text(answer)
    assert answer.status_code == 403 and "You are not an operator of this console" in page
    assert "mallory@example.com" in page and "[console] operators" in page
    assert client.get(f"{PUBLIC}/console/events").status_code == 303
    store: Store = app.extensions["webhook"].store
    assert store.connections() == [] and store.audit_lines() == []
    store.close()


def test_connections_page_disconnects_and_makes_a_service_user_link(settings: Settings, fake: FakeGenesys,
                                                                    clock: Clock) -> None:
    from tests.test_connect import begin, callback

    jane = fake.add_user("jane.agent@example.com", "Jane Agent")
    ops = fake.add_user("ops.olga@example.com", "Ops Olga")
    app = genesys_app(settings, fake, clock, operators=(ops,))
    agent_browser = app.test_client()
    fake.consent_as(jane)
    assert callback(agent_browser, begin(agent_browser).params).status_code == 200
    client = public_client(app)
    genesys_login(client, fake, ops)
    store: Store = app.extensions["webhook"].store
    page = text(client.get(f"{PUBLIC}/console/connections"))
    assert jane in page and "jane.agent@example.com" in page and "Disconnect" in page
    assert "refresh_token" not in page and "gAAAA" not in page  # no token, not even encrypted
    agents = text(client.get(f"{PUBLIC}/console/agents"))
    assert agents.count("<span class=\"ok\">ok</span>") == 0  # no event has named jane yet

    token = csrf(client, f"{PUBLIC}/console/connections")
    link = client.post(f"{PUBLIC}/console/connections/service-user-link", data={"csrf_token": token})
    shown = re.search(r"https://bridge\.example\.com/genesys/connect\?link=([\w-]+)", text(link))
    assert link.status_code == 200 and shown is not None
    gone = client.post(f"{PUBLIC}/console/connections/disconnect", data={"user_id": jane, "csrf_token": token})
    assert gone.status_code == 303
    assert store.connections() == [] and fake.revoked_tokens == 2  # the login's token, then jane's
    assert "disconnected jane.agent@example.com" in text(client.get(PUBLIC + gone.headers["Location"]))
    lines = store.audit_lines()
    assert [(a.operator, a.action, a.target) for a in lines] == [  # operators named by e-mail, listed by user id
        ("ops.olga@example.com", "disconnect", f"agent jane.agent@example.com ({jane})"),
        ("ops.olga@example.com", "service_user_link", "service user"),
        ("ops.olga@example.com", "login", "console")]
    assert all(shown.group(1) not in a.detail + a.target for a in lines)
    store.close()


def test_agents_page_shows_each_connection_state(settings: Settings, fake: FakeGenesys, clock: Clock,
                                                 sqlite_url: str) -> None:
    app = genesys_app(settings, fake, clock, operators=("ops@example.com",), password=PASSWORD)
    client = public_client(app)
    log_in(client, base=PUBLIC)  # PUBLIC_URL is https: the session cookie is Secure
    store: Store = app.extensions["webhook"].store
    for user, email, state in (("u-ok", "ok.agent@example.com", "ok"), ("u-broken", "bad.agent@example.com", "broken")):
        store.save_connection(Connection(user, "agent", email, email, "x", state=state,  # type: ignore[arg-type]
                                         reason="refresh refused (400 invalid_grant)" if state == "broken" else "",
                                         refreshed_at=T0, created_at=T0))
    client_post = app.test_client()
    from webhook import signatures

    src = app.extensions["webhook"].settings.sources["helpdesk"]
    for agent in ("ok.agent@example.com", "BAD.agent@example.com", "none.agent@example.com"):
        body = generic(f"evt_{agent}", agent=agent).encode()
        headers = signatures.sign(src.scheme, body=body, secret=src.secrets[0], now=clock(),
                                  url="http://localhost/webhooks/helpdesk", header=src.header)
        assert client_post.post("/webhooks/helpdesk", data=body, headers=headers).status_code == 202
    page = text(client.get(f"{PUBLIC}/console/agents"))
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>((?:(?!</td>).)*?)</td>\s*</tr>", page,
                                                                    re.S)]
    assert cells == ["none", "broken refresh refused (400 invalid_grant)", "ok"]
    store.close()


def test_init_writes_a_secret_key() -> None:
    from webhook.cli import fresh_env

    out = fresh_env("SECRET_KEY=\nCONSOLE_PASSWORD=\n", {})
    key = re.search(r"^SECRET_KEY=(\S+)$", out, re.M)
    assert key is not None and len(key.group(1)) >= 48
    assert "CONSOLE_PASSWORD=\n" in out  # never invented: the console stays off until someone sets one
    assert fresh_env("SECRET_KEY=mine\n", {}) == "SECRET_KEY=mine\n"
