"""/metrics: bearer-protected Prometheus text with counts after a known sequence of events."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from tests.support.app import SignedPost
from tests.support.clocks import Clock
from webhook import create_app
from webhook.config import Settings
from webhook.store import NewDelivery, NewEvent

TOKEN = "metrics-token-for-tests"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, metrics_token=TOKEN)


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True)) for s in family.samples}


def generic(event_id: str, status: str = "payment_in_progress") -> str:
    return json.dumps({"event_id": event_id, "occurred_at": "2026-11-23T10:00:00Z", "agent": {"email": "a@ex.com"},
                       "ticket": {"id": "7", "status": status}})


def test_counts_follow_a_known_sequence(client: FlaskClient, signed_post: SignedPost, clock: Clock) -> None:
    signed_post("inhouse", generic("a"))
    signed_post("inhouse", generic("b", status="pending"))
    signed_post("inhouse", generic("a"))  # duplicate
    signed_post("inhouse", b"not json")  # invalid_event, stored
    signed_post("inhouse", generic("c"), secret="wrong")  # invalid_signature
    client.post("/webhooks/nosuch", data=b"{}")  # unknown_source
    signed_post("inhouse", b"x" * 300000)  # too large
    clock.advance(2)
    got = scrape(client)
    assert got[("webhook_events_received_total", (("source", "inhouse"),))] == 2
    assert got[("webhook_duplicates_total", (("source", "inhouse"),))] == 1
    for reason in ("invalid_event", "invalid_signature", "unknown_source", "request_entity_too_large"):
        assert got[("webhook_requests_rejected_total", (("reason", reason),))] == 1, reason
    assert got[("webhook_events_finished_total", (("state", "dry_run"),))] == 1
    assert got[("webhook_events_finished_total", (("state", "skipped"),))] == 1
    assert got[("webhook_processing_seconds_count", ())] == 2
    assert got[("webhook_worker_queue_depth", ())] == 0
    assert got[("webhook_oldest_unfinished_age_seconds", ())] == 0


def test_oldest_unfinished_age_comes_from_the_database(app: Flask, client: FlaskClient, clock: Clock) -> None:
    store = app.extensions["webhook"].store
    store.save(NewDelivery(source="inhouse", received_at=clock(), raw_body=b"{}"),
               [NewEvent(source="inhouse", event_id="left-over", state="received", detail="", received_at=clock())])
    clock.advance(42)
    assert scrape(client)[("webhook_oldest_unfinished_age_seconds", ())] == 42


def test_metrics_need_the_bearer_token(client: FlaskClient) -> None:
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    assert TOKEN not in wrong.get_data(as_text=True)


def test_metrics_are_disabled_without_a_token(settings: Settings, clock: Clock) -> None:
    app = create_app(replace(settings, metrics_token=None), clock=clock, background=False)
    response = app.test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 404 and "set METRICS_TOKEN" in response.json["detail"]
