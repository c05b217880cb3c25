"""The HTTP contract of DESIGN.md 4.1 through Flask's test client, with bodies signed by the production signer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import create_engine, func, select
from sqlalchemy import event as sa_event

from tests.support.app import ROOT, SignedPost
from tests.support.clocks import Clock
from webhook import create_app, signatures
from webhook.cli import freshen
from webhook.config import Settings
from webhook.store import NewDelivery, NewEvent, Store, deliveries, metadata


def sample(name: str, settings: Settings, source: str, clock: Clock) -> bytes:
    return freshen((ROOT / "samples" / name).read_bytes(), settings.sources[source].mapping, clock())


def generic(event_id: str = "evt_1", status: str = "payment_in_progress", occurred: str = "2026-11-23T10:00:00Z",
            agent: str = "jane.agent@example.com") -> str:
    return json.dumps({"event_id": event_id, "occurred_at": occurred, "agent": {"email": agent},
                       "ticket": {"id": "48213", "status": status, "previous_status": "open"}})


@pytest.mark.parametrize("source", ["helpdesk", "inhouse"])
def test_a_new_signed_event_is_accepted_stored_and_decided(signed_post: SignedPost, store: Store,
                                                           source: str) -> None:
    response = signed_post(source, generic())
    assert response.status_code == 202
    [accepted] = response.json["accepted"]
    assert response.json["duplicates"] == []
    assert (accepted["source"], accepted["event_id"]) == (source, "evt_1")
    record = store.get(accepted["id"])
    assert record is not None
    assert (record.state, record.action, record.agent, record.status) == (
        "dry_run", "mute", "jane.agent@example.com", "payment_in_progress")
    assert record.detail.startswith("would mute jane.agent@example.com by rule 1")
    assert store.delivery(record.delivery).raw_body == generic().encode()  # type: ignore[union-attr]


def test_zendesk_sample_is_accepted_and_mapped_through_agents(signed_post: SignedPost, store: Store,
                                                              settings: Settings, clock: Clock) -> None:
    response = signed_post("zendesk", sample("zendesk-status-changed.json", settings, "zendesk", clock))
    assert response.status_code == 202
    record = store.get(response.json["accepted"][0]["id"])
    assert record is not None
    assert (record.state, record.action, record.agent) == ("dry_run", "mute", "jane.agent@example.com")
    assert "zendesk: this team puts a ticket on hold" in record.detail


def test_hubspot_array_gives_one_event_each(signed_post: SignedPost, settings: Settings, clock: Clock) -> None:
    response = signed_post("hubspot", sample("hubspot-batch.json", settings, "hubspot", clock))
    assert response.status_code == 202
    assert len(response.json["accepted"]) == 2


def test_hubspot_signature_survives_a_proxy(client: FlaskClient, settings: Settings, clock: Clock) -> None:
    body = sample("hubspot-batch.json", settings, "hubspot", clock)
    headers = signatures.sign("hubspot-v3", body=body, secret=settings.sources["hubspot"].secrets[0], now=clock(),
                              url="https://hooks.example.com/webhooks/hubspot?portal=62515")
    headers |= {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com"}
    response = client.post("/webhooks/hubspot?portal=62515", data=body, headers=headers)
    assert response.status_code == 202, response.json
    headers.pop("X-Forwarded-Proto")
    assert client.post("/webhooks/hubspot?portal=62515", data=body, headers=headers).status_code == 401


def test_a_duplicate_delivery_answers_200_and_changes_nothing(signed_post: SignedPost, store: Store,
                                                              clock: Clock) -> None:
    first = signed_post("helpdesk", generic())
    before = store.get(first.json["accepted"][0]["id"])
    clock.advance(30)
    again = signed_post("helpdesk", generic())
    assert again.status_code == 200
    assert again.json == {"accepted": [], "duplicates": first.json["accepted"]}
    assert store.get(first.json["accepted"][0]["id"]) == before
    assert len(store.list()) == 1


def test_unknown_source_is_404(client: FlaskClient) -> None:
    response = client.post("/webhooks/nosuch", data=b"{}")
    assert response.status_code == 404
    assert response.json["error"] == "unknown_source"


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"secret": "whsec_d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA=="}, "signature mismatch"),
        ({"at_offset": -301}, "timestamp outside tolerance"),
        ({"at_offset": 301}, "timestamp outside tolerance"),
        ({"headers": {"webhook-signature": ""}}, "webhook-signature"),
    ],
)
def test_bad_signatures_are_401_and_nothing_is_stored(signed_post: SignedPost, store: Store, clock: Clock,
                                                      change: dict[str, object], detail: str) -> None:
    at = clock.now
    if "at_offset" in change:
        from datetime import timedelta

        at = clock.now + timedelta(seconds=float(change["at_offset"]))  # type: ignore[arg-type]
    response = signed_post("helpdesk", generic(), at=at, secret=change.get("secret"),  # type: ignore[arg-type]
                           headers=change.get("headers"))  # type: ignore[arg-type]
    assert response.status_code == 401
    assert response.json["error"] == "invalid_signature"
    assert detail in response.json["detail"]
    assert store.list() == []


def test_a_tampered_byte_is_refused(client: FlaskClient, settings: Settings, clock: Clock) -> None:
    body = generic().encode()
    headers = signatures.sign("hmac-sha256", body=body, secret=settings.sources["inhouse"].secrets[0], now=clock())
    tampered = body.replace(b"jane", b"jone")
    assert client.post("/webhooks/inhouse", data=tampered, headers=headers).status_code == 401


def test_a_rotated_second_secret_is_accepted(settings: Settings, clock: Clock) -> None:
    from dataclasses import replace

    src = replace(settings.sources["inhouse"], secrets=("old-one", "new-one"))
    rotated = create_app(replace(settings, sources={**settings.sources, "inhouse": src}), clock=clock,
                         background=False)
    body = generic().encode()
    answers = []
    for secret in ("old-one", "new-one"):  # the same delivery signed with each secret: stored once, then a duplicate
        headers = signatures.sign("hmac-sha256", body=body, secret=secret, now=clock())
        answers.append(rotated.test_client().post("/webhooks/inhouse", data=body, headers=headers))
    rotated.extensions["webhook"].store.close()
    assert [a.status_code for a in answers] == [202, 200]
    assert answers[1].json["duplicates"] == [{"id": answers[0].json["accepted"][0]["id"], "source": "inhouse",
                                              "event_id": "evt_1"}]


def test_a_signed_body_that_cannot_be_parsed_is_stored_invalid_and_400(signed_post: SignedPost,
                                                                       store: Store) -> None:
    response = signed_post("inhouse", b'{"ticket": {"id": "1"}}')
    assert response.status_code == 400
    assert response.json["error"] == "invalid_event"
    assert "required field status is missing" in response.json["detail"]
    [row] = response.json["invalid"]
    record = store.get(row["id"])
    assert record is not None
    assert (record.state, store.delivery(record.delivery).raw_body) == (  # type: ignore[union-attr]
        "invalid", b'{"ticket": {"id": "1"}}')
    assert "required field status" in record.detail


def test_an_array_with_one_bad_element_keeps_the_good_one(signed_post: SignedPost, store: Store,
                                                          clock: Clock) -> None:
    good = {"eventId": 1, "objectId": 5, "propertyValue": "card_capture", "ownerId": "74512",
            "occurredAt": int(clock().timestamp() * 1000)}
    response = signed_post("hubspot", json.dumps([good, {"eventId": 2}]))
    assert response.status_code == 400
    assert [a["event_id"] for a in response.json["accepted"]] == ["1"]
    assert [i["event_id"] for i in response.json["invalid"]] == ["2"]
    assert sorted(r.state for r in store.list()) == ["dry_run", "invalid"]


def test_the_body_limit_answers_413_as_json(signed_post: SignedPost, store: Store) -> None:
    response = signed_post("inhouse", b"x" * (262144 + 1))
    assert response.status_code == 413
    assert response.json == {"error": "request_entity_too_large", "detail": "the body is larger than 262144 bytes"}
    assert store.list() == []


def test_stored_headers_keep_ids_but_never_signatures(signed_post: SignedPost, store: Store) -> None:
    response = signed_post("helpdesk", generic(), headers={"Authorization": "Bearer abc", "X-Request-Id": "r1"})
    record = store.get(response.json["accepted"][0]["id"])
    assert record is not None
    lowered = {k.lower() for k in store.delivery(record.delivery).headers}  # type: ignore[union-attr]
    assert {"webhook-id", "webhook-timestamp", "x-request-id"} <= lowered
    assert not lowered & {"webhook-signature", "authorization"}


def test_store_down_answers_503_with_retry_after(app: Flask, signed_post: SignedPost) -> None:
    state = app.extensions["webhook"]
    state.store = Store(create_engine("sqlite:////nonexistent-folder/x.db"))
    response = signed_post("helpdesk", generic())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json["error"] == "store_unavailable"


def test_health_and_readiness(app: Flask, client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json["genesys"], ready.json["database"]) == (200, "dry_run", "ok")
    assert ready.json["oldest_unfinished_seconds"] is None
    now = app.extensions["webhook"].clock()
    app.extensions["webhook"].store.save(NewDelivery(source="inhouse", received_at=now, raw_body=b"{}"),
                                         [NewEvent(source="inhouse", event_id="left", state="received", detail="",
                                                   received_at=now)])
    app.extensions["webhook"].clock.advance(7)
    assert client.get("/readyz").json["oldest_unfinished_seconds"] == 7.0
    app.extensions["webhook"].store = Store(create_engine("sqlite:////nonexistent-folder/x.db"))
    down = client.get("/readyz")
    assert (down.status_code, down.json["database"]) == (503, "down")


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/webhooks/helpdesk", 405), ("GET", "/nope", 404)])
def test_errors_are_json_never_html(client: FlaskClient, method: str, path: str, status: int) -> None:
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.is_json and "error" in response.json


def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_413(signed_post: SignedPost) -> None:
    at_limit = signed_post("inhouse", b" " * 262144)
    assert at_limit.status_code == 400 and at_limit.json["error"] == "invalid_event"  # read, signed, not JSON
    assert signed_post("inhouse", b" " * 262145).status_code == 413


def test_a_signed_256_kib_array_of_1000_events_keeps_its_body_once(signed_post: SignedPost, store: Store,
                                                                   clock: Clock) -> None:
    """Issue 11, finding 1: each event of an array stored the whole body (1,000 x 256 KiB)."""
    pad = "x" * 134
    items = [{"eventId": n, "objectId": n, "propertyValue": "open", "ownerEmail": "jane.agent@example.com",
              "occurredAt": int(clock().timestamp() * 1000), "pad": pad} for n in range(1000)]
    body = json.dumps(items, separators=(",", ":")).encode()
    assert 240_000 < len(body) <= 262_144
    response = signed_post("hubspot", body)
    assert response.status_code == 202 and len(response.json["accepted"]) == 1000
    with store.engine.connect() as conn:
        kept = conn.execute(select(func.sum(func.length(deliveries.c.raw_body)))).scalar()
    assert kept == len(body) <= 1.1 * 262_144


def test_a_captured_hmac_delivery_is_a_duplicate_even_after_its_event_is_purged(
        signed_post: SignedPost, store: Store, clock: Clock, runner: FlaskCliRunner) -> None:
    """Issue 11, finding 3: deliver, purge, deliver the same bytes again answered 202 and "would mute"."""
    body = generic(event_id="evt_unmute", status="open", occurred="2026-11-23T10:00:00Z")
    assert signed_post("inhouse", body).status_code == 202
    clock.advance(2)
    assert "deleted 1 event(s)" in runner.invoke(args=["events", "purge", "--older-than", "1s"]).output
    again = signed_post("inhouse", body)
    assert (again.status_code, again.json) == (200, {"accepted": [], "duplicates": [
        {"id": None, "source": "inhouse", "event_id": "evt_unmute"}]})
    assert store.list(limit=None) == []


def test_an_hmac_event_without_its_own_time_is_invalid_not_dated_at_receipt(signed_post: SignedPost,
                                                                            store: Store) -> None:
    """Issue 11, finding 3: a body without occurred_at was dated at receipt, so a replay counted as fresh."""
    body = json.dumps({"event_id": "evt_no_time", "agent": {"email": "jane.agent@example.com"},
                       "ticket": {"id": "1", "status": "open"}})
    response = signed_post("inhouse", body)
    assert response.status_code == 400
    assert "required field occurred_at is missing (looked at occurred_at)" in response.json["detail"]
    assert [r.state for r in store.list()] == ["invalid"]
    assert signed_post("helpdesk", body.replace("evt_no_time", "evt_signed_time")).status_code == 202  # signed


def test_a_signed_non_json_body_takes_the_signatures_delivery_id(client: FlaskClient, settings: Settings,
                                                                 clock: Clock, store: Store) -> None:
    """Issue 11, smaller: the webhook-id was ignored and the event stored as sha256:... (DESIGN 4.4)."""
    headers = signatures.sign("standard", body=b"not json", secret=settings.sources["helpdesk"].secrets[0],
                              now=clock(), message_id="msg_2LzDelivery")
    response = client.post("/webhooks/helpdesk", data=b"not json", headers=headers)
    assert response.status_code == 400
    assert response.json["invalid"] == [{"id": 1, "event_id": "msg_2LzDelivery"}]


def test_readyz_says_503_when_the_database_can_be_read_but_not_written(app: Flask, client: FlaskClient,
                                                                     store: Store) -> None:
    """Issue 11, finding 4: with a full disk, writes got 503 but /readyz (a read) kept saying ok."""
    assert client.get("/readyz").status_code == 200
    sa_event.listen(store.engine, "connect", _read_only)
    store.engine.dispose()  # new connections: reads work, writes are refused as on a full disk
    try:
        assert store.counts() == {}
        ready = client.get("/readyz")
    finally:
        sa_event.remove(store.engine, "connect", _read_only)
        store.engine.dispose()
    assert ready.status_code == 503
    assert (ready.json["database"], ready.json["detail"]) == ("down", "the database cannot be written: "
                                                                      "OperationalError")


def _read_only(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA query_only = ON")


def test_a_missing_schema_is_named_with_the_command_that_creates_it(app: Flask, client: FlaskClient, store: Store,
                                                                   signed_post: SignedPost,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11, finding 9: a server started before `db upgrade` said "database: down" and "check DATABASE_URL"."""
    with store.engine.begin() as conn:
        metadata.drop_all(conn)
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json["database"]) == (503, "schema")
    assert ready.json["detail"] == ("the database has no schema yet: run `flask --app wsgi db upgrade` (the "
                                    "Procfile's release step) to create it")
    response = signed_post("helpdesk", generic())
    assert (response.status_code, response.headers["Retry-After"], response.json["detail"]) == (
        503, "5", "the service's database is not set up yet (its operator runs the schema migration); retry later")
    assert "store error: the database has no schema yet: run `flask --app wsgi db upgrade`" in caplog.text
