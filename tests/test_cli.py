"""The commands: init, send, events list/show/export, rules check."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import responses
from flask.testing import FlaskClient, FlaskCliRunner

from tests.support.app import ROOT, SignedPost, make_settings
from tests.support.clocks import Clock
from webhook import create_app
from webhook.cli import IMPORT_MARK, IMPORT_NOTE, fresh_env, parse_since
from webhook.crypto import parse_keys
from webhook.genesys.model import Attempt
from webhook.store import Store


def generic(event_id: str, status: str = "payment_in_progress") -> str:
    return json.dumps({"event_id": event_id, "occurred_at": "2026-11-23T10:00:00Z", "agent": {"email": "a@ex.com"},
                       "ticket": {"id": "7", "status": status}})


def test_init_writes_env_with_fresh_secrets_once_and_creates_the_database(tmp_path: Path) -> None:
    shutil.copy(ROOT / ".env.example", tmp_path / ".env.example")
    shutil.copytree(ROOT / "config", tmp_path / "config")
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_WEBHOOK_SECRET") and not k.startswith(("GENESYS", "DATABASE_URL", "WEBHOOK_CONFIG"))}
    env["PYTHONPATH"] = str(ROOT)
    flask = [sys.executable, "-m", "flask", "--app", "wsgi", "init"]
    first = subprocess.run(flask, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "wrote .env with fresh webhook secrets" in first.stdout
    written = (tmp_path / ".env").read_text()
    values = dict(line.split("=", 1) for line in written.splitlines() if "=" in line and not line.startswith("#"))
    assert values["GENESYS_DRY_RUN"] == "true"
    assert values["HELPDESK_WEBHOOK_SECRET"].startswith("whsec_")
    assert all(len(values[f"{n}_WEBHOOK_SECRET"]) >= 32 for n in ("ZENDESK", "HELPDESK", "INHOUSE", "HUBSPOT"))
    assert (tmp_path / ".env").stat().st_mode & 0o077 == 0
    assert (tmp_path / "instance" / "webhook.db").exists()
    second = subprocess.run(flask, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert ".env exists; left as it is" in second.stdout
    assert (tmp_path / ".env").read_text() == written


def test_fresh_env_fills_only_empty_secrets_and_forces_dry_run() -> None:
    example = "# c\nZENDESK_WEBHOOK_SECRET=\nOTHER_WEBHOOK_SECRET=keep\nGENESYS_DRY_RUN=false\nDATABASE_URL=\n"
    out = fresh_env(example, {"zendesk": "zendesk", "other": "standard", "new": "standard"})
    lines = out.splitlines()
    assert lines[0] == "# c" and lines[2] == "OTHER_WEBHOOK_SECRET=keep" and lines[3] == "GENESYS_DRY_RUN=true"
    assert lines[1].startswith("ZENDESK_WEBHOOK_SECRET=") and len(lines[1]) > 40
    assert lines[-1].startswith("NEW_WEBHOOK_SECRET=whsec_")
    assert fresh_env(example, {"zendesk": "zendesk"}) != out


def test_fresh_env_writes_a_token_encryption_key_only_where_none_is_set() -> None:
    out = fresh_env("TOKEN_ENCRYPTION_KEY=\nGENESYS_USER_CLIENT_ID=\n", {})
    key = out.splitlines()[0].removeprefix("TOKEN_ENCRYPTION_KEY=")
    assert parse_keys(key) == (key,) and out.splitlines()[1] == "GENESYS_USER_CLIENT_ID="
    assert fresh_env("TOKEN_ENCRYPTION_KEY=mine\n", {}) == "TOKEN_ENCRYPTION_KEY=mine\n"


def test_send_signs_with_the_source_scheme_and_prints_the_answer(runner: FlaskCliRunner, client: FlaskClient,
                                                                 store: Store, tmp_path: Path) -> None:
    def forward(request: Any) -> tuple[int, dict[str, str], str]:
        answer = client.post("/webhooks/hubspot", data=request.body, headers=dict(request.headers),
                             base_url="http://127.0.0.1:5000")
        return answer.status_code, {}, answer.get_data(as_text=True)

    with responses.RequestsMock() as mock:
        mock.add_callback(responses.POST, "http://127.0.0.1:5000/webhooks/hubspot", callback=forward)
        result = runner.invoke(args=["send", str(ROOT / "samples" / "hubspot-batch.json"), "--source", "hubspot",
                                     "--fresh"])
    assert result.exit_code == 0, result.output
    assert "HTTP 202" in result.output
    assert [r.state for r in store.list()] == ["dry_run", "dry_run"]


def test_send_reports_an_unknown_source_and_an_unreachable_service(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["send", str(ROOT / "samples" / "generic-payment.json"), "--source", "nope"])
    assert result.exit_code != 0 and "unknown source 'nope'" in result.output
    with responses.RequestsMock():  # no URL registered: the connection is refused
        result = runner.invoke(args=["send", str(ROOT / "samples" / "generic-payment.json"), "--source", "inhouse"])
    assert result.exit_code != 0 and "is the service running?" in result.output


def test_events_list_show_and_export(runner: FlaskCliRunner, signed_post: SignedPost, clock: Clock) -> None:
    signed_post("inhouse", generic("evt_a"))
    clock.advance(7200)
    signed_post("inhouse", generic("evt_b", status="open"))
    signed_post("inhouse", b"not json")

    table = runner.invoke(args=["events", "list"]).output
    assert table.splitlines()[0].split() == ["id", "received", "source", "event_id", "state", "action", "agent",
                                             "detail"]
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["3", "2", "1"]

    rows = json.loads(runner.invoke(args=["events", "list", "--json", "--since", "1h"]).output)
    assert rows[0]["state"] == "invalid"
    assert {r["event_id"] for r in rows} >= {"evt_b"} and "evt_a" not in {r["event_id"] for r in rows}
    assert {"id", "source", "event_id", "state", "detail", "occurred_at", "received_at"} <= set(rows[0])
    only = json.loads(runner.invoke(args=["events", "list", "--json", "--state", "skipped"]).output)
    assert [r["event_id"] for r in only] == ["evt_b"]
    assert len(json.loads(runner.invoke(args=["events", "list", "--json", "--limit", "1"]).output)) == 1

    shown = json.loads(runner.invoke(args=["events", "show", "1", "--json"]).output)
    assert shown["body"] == generic("evt_a") and shown["attempts"] == []
    assert "x-hub-signature-256" not in {k.lower() for k in shown["headers"]}
    assert "rule 1" in runner.invoke(args=["events", "show", "1"]).output
    missing = runner.invoke(args=["events", "show", "99"])
    assert missing.exit_code != 0 and "no event with id 99" in missing.output

    lines = runner.invoke(args=["events", "export"]).output.strip().splitlines()
    exported = [json.loads(line) for line in lines if line.startswith("{")]
    assert [(e["kind"], e["delivery"], e.get("event_id")) for e in exported] == [
        ("delivery", 1, None), ("event", 1, "evt_a"), ("delivery", 2, None), ("event", 2, "evt_b"),
        ("delivery", 3, None), ("event", 3, exported[5]["event_id"])]
    assert exported[4]["raw_body"] == "not json" and exported[4]["raw_body_base64"] == "bm90IGpzb24="
    assert "raw_body" not in exported[5] and exported[5]["state"] == "invalid"


def test_rules_check_prints_the_table_and_the_matching_rule(runner: FlaskCliRunner) -> None:
    out = runner.invoke(args=["rules", "check"]).output
    assert "card details are being taken" in out and out.count("\n") >= 6
    hit = runner.invoke(args=["rules", "check", "--status", "HOLD", "--from", "open", "--source", "zendesk"]).output
    assert "mute (rule 3 (zendesk: this team puts a ticket on hold" in hit
    miss = runner.invoke(args=["rules", "check", "--status", "hold", "--source", "helpdesk"]).output
    assert "none (rule 5 (everything else" in miss


@pytest.mark.parametrize(("value", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600), ("30d", 2592000)])
def test_since_durations(value: str, seconds: int, clock: Clock) -> None:
    since = parse_since(value, clock())
    assert since is not None and (clock() - since).total_seconds() == seconds


def test_since_refuses_nonsense(clock: Clock) -> None:
    import click

    with pytest.raises(click.BadParameter, match="neither a duration"):
        parse_since("last tuesday", clock())


def test_replay_needs_a_selection(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["replay"])
    assert result.exit_code == 2 and "name the events" in result.output


def test_replay_runs_saved_events_again_and_prints_a_table(runner: FlaskCliRunner, signed_post: SignedPost,
                                                          store: Store, clock: Clock) -> None:
    signed_post("inhouse", generic("evt_a"))
    signed_post("inhouse", generic("evt_b", status="open"))
    result = runner.invoke(args=["replay", "1", "2", "99"])
    lines = result.output.splitlines()
    assert lines[0].split() == ["event", "action", "old", "state", "new", "state", "detail"]
    assert lines[1].split()[:4] == ["1", "mute", "dry_run", "dry_run"]
    assert lines[2].split()[:4] == ["2", "none", "skipped", "skipped"]
    assert "id 99" in lines[3] and "no such event" in lines[3]
    assert result.exit_code == 1  # an id that does not exist is a failure to replay
    clock.advance(600)
    old = runner.invoke(args=["replay", "--state", "dry_run"])
    assert old.exit_code == 0 and "expired" in old.output and "event is 600 s old" in old.output
    forced = runner.invoke(args=["replay", "1", "--force"])
    assert "forced past the age and ordering guards" in forced.output and forced.exit_code == 0


def test_replay_dry_run_changes_nothing(runner: FlaskCliRunner, signed_post: SignedPost, store: Store) -> None:
    signed_post("inhouse", generic("evt_a"))
    before = store.get(1)
    result = runner.invoke(args=["replay", "--source", "inhouse", "--dry-run"])
    assert result.exit_code == 0 and "would act" in result.output and "(dry run)" in result.output
    assert store.get(1) == before


def test_replay_file_imports_missing_events_and_reports_bad_lines(runner: FlaskCliRunner, signed_post: SignedPost,
                                                                  app: Any, tmp_path: Path, sqlite_url: str) -> None:
    signed_post("inhouse", generic("evt_a"))
    export = runner.invoke(args=["events", "export"]).output.splitlines()
    exported = [line for line in export if line.startswith("{")]
    path = tmp_path / "events.jsonl"
    path.write_bytes("\n".join(exported).encode() + b'\nnot json\n{"source": "inhouse"}\n\xff\xfe\n[1]\n'
                     b'{"source": "inhouse", "event_id": "x", "raw_body_base64": "%%%"}\n')
    state = app.extensions["webhook"]
    state.store.purge(before=state.clock() + __import__("datetime").timedelta(days=1))
    assert state.store.list() == []
    result = runner.invoke(args=["replay", "--file", str(path)])
    assert result.exit_code == 1
    assert "1 replayed, 0 failed, 5 unreadable line(s)" in result.output
    for reason in ["line 3", "not a JSON object in UTF-8", "line 4", "event_id is missing", "line 6",
                   "not a JSON object", "raw_body_base64 is not base64"]:
        assert reason in result.output
    [record] = state.store.list()
    assert (record.event_id, record.state, record.agent) == ("evt_a", "dry_run", "a@ex.com")


def test_replay_file_names_unstorable_ids_and_marks_what_it_imports(runner: FlaskCliRunner, app: Any,
                                                                   tmp_path: Path) -> None:
    """Found by tests/test_fuzz.py: an id with an unpaired surrogate crashed the import with a traceback, and an
    imported row, once replayed, looked like one received over HTTP with a verified signature."""
    headers = {"X-Trace": "1", "Authorization": "Bearer t0ken", "X-Hub-Signature-256": "sha256=ab", "Cookie": "c=1"}
    good = {"source": "inhouse", "event_id": "evt_file", "raw_body": generic("evt_file"), "headers": headers}
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([json.dumps(good), json.dumps(good | {"event_id": "\ud800"}),
                                json.dumps(good | {"source": "s" * 65}), json.dumps(good | {"event_id": "a\x00"})]))
    result = runner.invoke(args=["replay", "--file", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1 and "1 replayed, 0 failed, 3 unreadable line(s)" in result.output
    for number, key in ((2, "event_id"), (3, "source"), (4, "event_id")):
        assert re.search(rf"line {number} .* {key} is longer than \d+ characters, or holds a NUL", result.output)
    [record] = app.extensions["webhook"].store.list()
    assert record.state == "dry_run"
    kept = app.extensions["webhook"].store.delivery(record.delivery)
    assert kept.headers == {"X-Trace": "1", IMPORT_MARK: IMPORT_NOTE}  # never credentials or signatures, as at intake


def test_events_purge_deletes_old_events_with_their_attempts(runner: FlaskCliRunner, signed_post: SignedPost,
                                                             store: Store, clock: Clock) -> None:
    for n in range(5):
        signed_post("inhouse", generic(f"old_{n}"))
    store.add_attempt(1, Attempt("GET", "/x", 200, None, None, 1.0, None, at=clock()))
    clock.advance(31 * 86400)
    signed_post("inhouse", generic("new"))
    result = runner.invoke(args=["events", "purge", "--batch", "2"])
    assert result.exit_code == 0 and result.output.startswith("deleted 5 event(s) received before 2026-11-24")
    assert [r.event_id for r in store.list()] == ["new"]
    assert store.attempts(1) == []
    assert "deleted 0 event(s)" in runner.invoke(args=["events", "purge", "--older-than", "30d"]).output
    clock.advance(1)
    assert "deleted 1 event(s)" in runner.invoke(args=["events", "purge", "--older-than", "0s"]).output
    bad = runner.invoke(args=["events", "purge", "--older-than", "soon"])
    assert bad.exit_code == 2 and "is not a duration such as 30d" in bad.output


@pytest.mark.parametrize("args", [["events", "list"], ["events", "show", "1"], ["events", "export"],
                                  ["events", "purge"], ["replay", "1"], ["replay", "--state", "failed"]])
def test_a_database_that_cannot_be_used_is_one_line_not_a_traceback(tmp_path: Path, args: list[str]) -> None:
    settings = make_settings("postgresql+psycopg://nobody:hunter2@127.0.0.1:1/nowhere")
    app = create_app(settings, background=False)
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "Error: the database cannot be used: OperationalError; check DATABASE_URL and that the database is running")
    assert "Traceback" not in result.output and "hunter2" not in result.output


def test_stored_control_characters_are_shown_escaped_and_json_stays_exact(runner: FlaskCliRunner,
                                                                          signed_post: SignedPost) -> None:
    """Issue 11, finding 6: events show/list and the replay table printed ESC[2J, an OSC 52 clipboard write and a
    title change raw to the operator's terminal."""
    hostile = "a\x1b[2J\x1b]52;c;ZXZpbA==\x07\x1b]0;owned\x07\u202e@example.com"
    body = json.dumps({"event_id": "evt\x1b[31m", "occurred_at": "2026-11-23T10:00:00Z", "agent": {"email": hostile},
                       "ticket": {"id": "7\x9b", "status": "payment_in_progress"}})
    signed_post("inhouse", body, headers={"X-Note": "x\x1b[2Jy"})
    signed_post("inhouse", b"not json \x1b[2J\n  state: applied")
    outputs = [runner.invoke(args=args).output for args in (
        ["events", "list"], ["events", "show", "1"], ["events", "show", "2"], ["replay", "1", "2"],
        ["replay", "1", "--dry-run"])]
    for output in outputs:
        assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]", output), output
    shown = outputs[1]
    assert "a\\x1b[2J\\x1b]52;c;ZXZpbA==\\x07\\x1b]0;owned\\x07\\u202e@example.com" in shown
    assert "evt\\x1b[31m" in shown and "7\\x9b" in shown and "x-note: x\\x1b[2jy" in shown.lower()
    assert "not json \\x1b[2J\\x0a  state: applied" in outputs[2]  # one line: no forged field below the body
    exact = json.loads(runner.invoke(args=["events", "show", "1", "--json"]).output)
    assert (exact["agent"], exact["event_id"], exact["body"]) == (hostile, "evt\x1b[31m", body)
    assert json.loads(runner.invoke(args=["events", "list", "--json"]).output)[1]["agent"] == hostile


def test_plain_events_show_prints_the_stored_headers(runner: FlaskCliRunner, signed_post: SignedPost) -> None:
    """Issue 11, smaller: the README says `events show` prints headers; the plain form printed none."""
    signed_post("inhouse", generic("evt_h"), headers={"X-Request-Id": "router-1"})
    shown = runner.invoke(args=["events", "show", "1"]).output
    lines = shown.splitlines()
    assert "         headers: " in lines and "                  x-request-id: router-1" in [
        line.lower() for line in lines]
    assert "x-hub-signature-256" not in shown.lower()


@pytest.mark.parametrize(("args", "option"), [
    (["events", "list", "--since", "1000000w"], "--since"),
    (["replay", "--since", "99999999999999999999d"], "--since"),
    (["events", "purge", "--older-than", "99999999999999999999d"], "--older-than"),
])
def test_a_duration_out_of_range_is_one_line_naming_the_option(runner: FlaskCliRunner, args: list[str],
                                                               option: str) -> None:
    """Issue 11, smaller: these ended in an OverflowError traceback."""
    result = runner.invoke(args=args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"Error: Invalid value for {option}: " in result.output and "reaches back before year 1" in result.output


def test_a_dry_run_replay_is_not_told_a_newer_event_was_acted_on(runner: FlaskCliRunner, signed_post: SignedPost,
                                                                 store: Store) -> None:
    """Issue 11, smaller: dry_run events took the agent's slot, so `replay 1 --dry-run` said a newer event was
    "already acted on" when nothing was."""
    signed_post("inhouse", generic("evt_1"))
    signed_post("inhouse", generic("evt_2").replace("10:00:00Z", "10:00:01Z"))  # a newer mute, decided dry_run
    assert [r.state for r in store.list()] == ["dry_run", "dry_run"]
    result = runner.invoke(args=["replay", "1", "--dry-run"])
    assert "would act" in result.output and "already acted on" not in result.output, result.output


def test_events_help_names_every_subcommand(runner: FlaskCliRunner) -> None:
    assert "The event log: list, show, export, purge." in runner.invoke(args=["events", "--help"]).output


def test_purge_forgets_agents_no_event_needs_and_keeps_the_active_ones(runner: FlaskCliRunner, store: Store,
                                                                       clock: Clock) -> None:
    """Issue 11, finding 7: 50,000 events naming distinct agents, purged, left 50,002 agent rows."""
    for n in range(5):
        store.advance_agent(f"gone{n}@example.com", occurred_at=clock(), event_pk=100 + n, now=clock())
    clock.advance(3 * 86400)
    store.advance_agent("active@example.com", occurred_at=clock() - timedelta(seconds=30), event_pk=200, now=clock())
    result = runner.invoke(args=["events", "purge", "--older-than", "0s"])
    assert result.exit_code == 0, result.output
    assert [store.agent_slot(f"gone{n}@example.com") for n in range(5)] == [None] * 5
    # The active agent's slot stays: an event older than it, still inside the age limit, must still be skipped.
    assert store.agent_slot("active@example.com") == (clock() - timedelta(seconds=30), 200)


def test_a_missing_schema_is_named_by_every_command(app: Any, runner: FlaskCliRunner, store: Store) -> None:
    """Issue 11, finding 9: the CLI said "check DATABASE_URL" for a database that only lacked its tables."""
    from webhook.store import metadata

    with store.engine.begin() as conn:
        metadata.drop_all(conn)
    result = runner.invoke(args=["events", "list"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: the database has no schema yet: run `flask --app wsgi db upgrade` (the Procfile's release step) to "
        "create it")


def test_init_does_not_tell_the_user_to_run_init(tmp_path: Path) -> None:
    """Issue 11, smaller: `init` printed "no .env here yet: run init" while it was running."""
    shutil.copy(ROOT / ".env.example", tmp_path / ".env.example")
    shutil.copytree(ROOT / "config", tmp_path / "config")
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_WEBHOOK_SECRET") and not k.startswith(("GENESYS", "DATABASE_URL", "WEBHOOK_CONFIG"))}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "init"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "no .env here yet" not in result.stdout + result.stderr
