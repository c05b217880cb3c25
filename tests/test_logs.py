"""Logs: one JSON object per line with ids and states, plain lines locally, and never a secret, token or body."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import replace

import pytest
from flask.testing import FlaskClient

from tests.support.app import SignedPost, make_settings
from tests.support.clocks import Clock
from tests.support.fake_genesys import FakeGenesys
from webhook import create_app, signatures
from webhook.config import Genesys
from webhook.logs import JsonFormatter, PlainFormatter, RequestIdFilter


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log line of the service, formatted as in production, at DEBUG level."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def generic(event_id: str, agent: str = "jane.agent@example.com") -> str:
    return json.dumps({"event_id": event_id, "occurred_at": "2026-11-23T10:00:00Z", "agent": {"email": agent},
                       "ticket": {"id": "7", "status": "payment_in_progress"}})


def test_each_line_is_a_json_object_with_ids_and_the_request_id(client: FlaskClient, signed_post: SignedPost,
                                                                captured: io.StringIO) -> None:
    signed_post("inhouse", generic("evt_1"), headers={"X-Request-Id": "router-req-42"})
    records = lines(captured)
    assert records, "nothing was logged"
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
    stored = next(r for r in records if r["message"] == "event stored")
    assert (stored["request_id"], stored["source"], stored["event"], stored["state"]) == (
        "router-req-42", "inhouse", 1, "received")
    finished = next(r for r in records if r["message"] == "event finished")
    assert finished["state"] == "dry_run"


def test_a_request_id_that_is_not_a_plain_token_is_replaced(client: FlaskClient) -> None:
    response = client.get("/healthz", headers={"X-Request-Id": 'bad"id {}'})
    assert response.headers["X-Request-Id"] != 'bad"id {}'
    assert len(response.headers["X-Request-Id"]) == 32


def test_plain_lines_carry_the_same_fields() -> None:
    record = logging.LogRecord("webhook.x", logging.INFO, __file__, 1, "event stored", None, None)
    record.event = 7
    record.state = "received"
    assert PlainFormatter().format(record).endswith("INFO webhook.x: event stored [event=7 state=received]")


def test_no_secret_token_signature_or_body_reaches_the_logs(captured: io.StringIO, sqlite_url: str,
                                                            clock: Clock) -> None:
    fake = FakeGenesys(client_secret="genesys-client-secret-XYZZY").start()
    try:
        jane = fake.add_user("jane.agent@example.com")
        fake.start_call(jane)
        settings = make_settings(sqlite_url)
        settings = replace(settings, genesys=Genesys(dry_run=False, client_id=fake.client_id,
                                                     client_secret=fake.client_secret,
                                                     api_url=fake.url, login_url=fake.url))
        app = create_app(settings, clock=clock, background=False)
        client = app.test_client()
        secret = settings.sources["inhouse"].secrets[0]
        body = generic("evt_card_4111111111111111").replace("payment_in_progress", "card_capture").encode()
        headers = signatures.sign("hmac-sha256", body=body, secret=secret, now=clock())
        headers |= {"Authorization": "Bearer router-token-SHOULD-NOT-LOG", "Cookie": "session=COOKIE-SECRET"}
        assert client.post("/webhooks/inhouse", data=body, headers=headers).status_code == 202
        client.post("/webhooks/inhouse", data=body + b" ", headers=headers)  # bad signature: refused
        wrong = signatures.sign("hmac-sha256", body=b"{not json 4111111111111111", secret=secret, now=clock())
        client.post("/webhooks/inhouse", data=b"{not json 4111111111111111", headers=wrong)
        tokens = set(fake._tokens)
        fake.revoke_tokens()  # the next event refetches a token
        body2 = generic("evt_2").encode()
        client.post("/webhooks/inhouse", data=body2,
                    headers=signatures.sign("hmac-sha256", body=body2, secret=secret, now=clock()))
        record = app.extensions["webhook"].store.get(1)
        assert record is not None and record.state == "applied"
        tokens |= set(fake._tokens)
    finally:
        fake.stop()
    text = captured.getvalue()
    assert "event finished" in text and "applied" in text
    forbidden = [secret, fake.client_secret, "router-token-SHOULD-NOT-LOG", "COOKIE-SECRET", "4111111111111111",
                 headers["X-Hub-Signature-256"], headers["X-Hub-Signature-256"].removeprefix("sha256="),
                 wrong["X-Hub-Signature-256"].removeprefix("sha256="), *tokens]
    assert len(tokens) == 2
    for value in forbidden:
        assert value not in text, f"a secret reached the logs: {value[:6]}…"
