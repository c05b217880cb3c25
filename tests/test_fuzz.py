"""Hostile input, fuzzed ("Proof under fire", item 3): the intake, the `replay --file` reader, the config loader.

Seeded, reproducible and time-bounded. Every case is built from its own generator, `random.Random(f"{seed}:{target}:
{index}")`, so a failure names a seed and an index and can be run alone:

    FUZZ_SEED=20261123 FUZZ_CASE=4711 scripts/test -m fuzz -k intake -s

| variable | default | meaning |
|---|---|---|
| `FUZZ_SEED` | 20261123 | the seed (an integer, or `random` to draw one; it is printed either way) |
| `FUZZ_CASES` | 100000 | intake requests |
| `FUZZ_CASE` | (all) | comma-separated indices of intake cases to run alone, in this process |
| `FUZZ_WORKERS` | 2 (cores) | processes sharing the intake cases, each with its own app and SQLite file |
| `FUZZ_REPLAY_FILES`, `FUZZ_CONFIG_CASES` | 400, 4000 | replay files, config-loader calls |
| `FUZZ_CASE_SECONDS` | 5 | one case slower than this fails (a hang is cut by SIGALRM at 4 times this) |
| `FUZZ_BUDGET_SECONDS` | 400 | the whole intake run; past it the workers are stopped and the test fails |

The intake cases go through Flask's test client (in process; 0.4 ms a refused request, 1.3 ms a stored one on this
machine: Werkzeug's request building and SQLAlchemy's transaction are most of it) to the app built from the shipped
config on SQLite, `app.testing` off so that an exception is the 500 a sender would see. Invariants on every answer:
never a 5xx; every 4xx is JSON with an `error` code and a `detail` naming the problem; a request not correctly signed
stores nothing (the highest row id is read before and after); a correctly signed body (signed by the production
signer after mutation) is answered as `events.parse` says: 400 with every unparseable element stored `invalid` (raw
bytes kept) or 2xx; nothing is left `received` or `processing`, and no event ends in an internal error.

The generators reuse test_robustness's: good bodies in each source's shape, `BadBodies`, its signature `mutations`,
its garbage values, timestamps and content types.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import itertools
import json
import math
import multiprocessing
import os
import queue
import random
import re
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from tests.support.app import CONFIG, SECRETS, make_settings
from tests.support.clocks import T0, Clock
from tests.support.databases import fresh_database
from tests.support.hostile import (
    BAD_TIMES,
    BAD_TIMESTAMPS,
    FORWARDED,
    GARBAGE,
    LIMIT,
    NOT_JSON,
    NOT_UTF8,
    ODD_CONTENT_TYPES,
    SIGNATURE_HEADER,
    SIGNATURE_HEADERS,
    SOURCES,
    TIMESTAMP_HEADER,
    WRONG_TYPES,
    BadBodies,
    Intake,
    Request,
    good_body,
    mutations,
)
from webhook import create_app
from webhook.config import Settings
from webhook.errors import ConfigError
from webhook.events import Envelope, InvalidItem, parse
from webhook.intake import export_lines, read_export
from webhook.signatures import TIMESTAMPED_SCHEMES
from webhook.store import NewDelivery, NewEvent, Store

pytestmark = pytest.mark.fuzz

DEFAULT_SEED = 20261123


@dataclass(frozen=True)
class Options:
    """The knobs of a fuzz run, from FUZZ_* variables (read when a test starts, never at import)."""

    seed: int
    cases: int
    only: tuple[int, ...]
    workers: int
    replay_files: int
    config_cases: int
    case_seconds: float
    budget_seconds: float

    @classmethod
    def from_env(cls) -> Options:
        raw = os.environ.get("FUZZ_SEED", str(DEFAULT_SEED)).strip()
        seed = drawn_seed() if raw == "random" else int(raw)
        only = tuple(int(n) for n in os.environ.get("FUZZ_CASE", "").split(",") if n.strip())
        return cls(seed=seed, cases=int(os.environ.get("FUZZ_CASES", "100000")), only=only,
                   workers=max(1, int(os.environ.get("FUZZ_WORKERS", str(min(2, os.cpu_count() or 1))))),
                   replay_files=int(os.environ.get("FUZZ_REPLAY_FILES", "400")),
                   config_cases=int(os.environ.get("FUZZ_CONFIG_CASES", "4000")),
                   case_seconds=float(os.environ.get("FUZZ_CASE_SECONDS", "5")),
                   budget_seconds=float(os.environ.get("FUZZ_BUDGET_SECONDS", "400")))

    def replay_hint(self, index: int) -> str:
        return f"FUZZ_SEED={self.seed} FUZZ_CASE={index}"


@functools.cache
def drawn_seed() -> int:
    """FUZZ_SEED=random: one seed for the whole run, drawn once."""
    return random.SystemRandom().randrange(2**32)


@pytest.fixture
def options(capsys: pytest.CaptureFixture[str]) -> Options:
    opts = Options.from_env()
    with capsys.disabled():
        print(f"\n[fuzz] FUZZ_SEED={opts.seed}", flush=True)
    return opts


def case_rng(seed: int, target: str, index: int) -> random.Random:
    """The generator of one case: a string seed is hashed with SHA-512, stable across runs and PYTHONHASHSEED."""
    return random.Random(f"{seed}:{target}:{index}")


class CaseTimeout(Exception):
    """A case ran past the watchdog (SIGALRM)."""


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Raise CaseTimeout in this thread if the block runs longer than `seconds` (main thread, POSIX only)."""
    usable = hasattr(signal, "setitimer") and threading_is_main()
    if not usable:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"no answer after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def threading_is_main() -> bool:
    return threading.current_thread() is threading.main_thread()


def test_the_watchdog_cuts_a_case_that_hangs() -> None:
    """The per-case hang check itself: a case stuck past its time is interrupted and reported, not waited for."""
    started = time.monotonic()
    with pytest.raises(CaseTimeout, match=r"no answer after 0\.05 s"), watchdog(0.05):
        time.sleep(5)
    assert time.monotonic() - started < 1


# ================================================================ intake: the generators


SCHEME_OF = {"zendesk": "zendesk", "helpdesk": "standard", "inhouse": "hmac-sha256", "hubspot": "hubspot-v3"}
REASON_RE = re.compile(r"(missing header \S+|malformed header \S+|malformed signature headers|no v1 signature in "
                       r"header \S+|timestamp outside tolerance \(\S+ s\)|signature mismatch)")
ERROR_CODES = {401: {"invalid_signature"}, 413: {"request_entity_too_large"},
               404: {"unknown_source", "not_found"}, 405: {"method_not_allowed"}, 400: {"invalid_event", "bad_request"}}
CHARSETS = ("utf-8", "UTF-8", "utf-16", "utf-16le", "latin-1", "iso-8859-1", "ascii", "utf-32", "bogus", "", "\xe9",
            '"utf-8"', "utf-8; q=0.1", "utf-8, latin-1")
CONTENT_TYPES = (*ODD_CONTENT_TYPES, "application/json", "application/json; charset={cs}", "text/json; charset={cs}",
                 "application/vnd.api+json", "application/json;;;", "APPLICATION/JSON",
                 "application/json ; charset={cs}",
                 "multipart/form-data", "application/x-www-form-urlencoded; charset={cs}", "text/plain; charset={cs}",
                 "application/json; charset=" + "x" * 3000)
ENCODINGS = ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be", "latin-1", "cp1252", "utf-8-sig", "utf-7")
TOKENS = (b"\x00", b"\\u0000", b'"\\ud800"', b'"\\udfff\\ud800"', b"\xef\xbb\xbf", b"\xfe\xff", b"NaN", b"Infinity",
          b"-Infinity", b"1e999", b"-1e400", b"9" * 5000, b"0." + b"0" * 3000 + b"1", b"\xff", b"\xc3", b"\xed\xa0\x80",
          b"[" * 3000, b"{" * 500, b'"' * 3, b"\\", b"\\x41", b"\\u12", b"//", b"/*", b"\r\n", b"\t" * 100,
          b"true", b"null", b",", b":", b'{"": ""}', b"\xe2\x80\xa8", b"-0", b"1E+308", b"\x7f", b"\x1b[31m")
EDGE_TIMES = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z",
              "9999-12-31T23:59:59.999999Z", "2026-11-23T10:00:00+23:59", "2026-11-23T10:00:00-23:59",
              "2026-11-23T10:00:00.123456789123Z", "2026-11-23T24:00:00Z", "1970-01-01T00:00:00Z", "253402300799",
              "253402300800", "-62135596800", 253402300799999, -1, 0, 1e-300, 2**63, -(2**63), 99999999999,
              100000000000,
              "2026-W48-1T10:00:00Z", "20261123T100000Z", "2026-11-23T10:00:00 Z", " 2026-11-23T10:00:00Z ", "٢٠٢٦")
VALUES = (None, True, False, 0, -1, 1.5, -0.0, 2**64, -(2**64), 10**30, 1e308, "", " ", "open", "\x00", "\ud800",
          "\ufeff", "é" * 600, "a" * 513, "x" * 100_000, [], {}, [None], {"id": None}, [[[[[]]]]],
          "jane.agent@example.com",
          "50fcd33c-1a2b-4c3d-8e9f-0123456789ab", "381920", 381920, 74512, "74512", *EDGE_TIMES)


RAW = "@@fuzz-raw@@"  # a placeholder string replaced by a raw token (NaN, 1e400, deep nesting) after dumping


def content_type(rng: random.Random, plain: int = 0) -> str | None:
    """A Content-Type (or none), its charset drawn too; `plain` extra chances of plain application/json."""
    value = rng.choice(("application/json",) * plain + CONTENT_TYPES)
    return value.replace("{cs}", rng.choice(CHARSETS)) if value else value


def short(value: Any) -> str:
    """A short repr for notes, safe on values nested thousands deep."""
    try:
        return repr(value)[:40]
    except RecursionError:
        return f"<{type(value).__name__} nested deep>"


def random_value(rng: random.Random) -> tuple[Any, str | None]:
    """A JSON value to put somewhere in a body, with the raw token it stands for (NaN, 1e400) when there is one."""
    pick = rng.random()
    if pick < 0.3:
        return rng.choice(WRONG_TYPES)(rng)
    if pick < 0.45:
        return rng.choice(BAD_TIMES)(rng)
    if pick < 0.55:  # deep nesting as a raw token: json.dumps itself cannot write it
        return RAW, deep_text(rng.choice([10, 900, 1100, 5000, 50_000]), rng.choice(["1", "null", '""', "{}"]))
    return rng.choice(VALUES), None


def deep_text(depth: int, leaf: str = "1") -> str:
    """JSON nested `depth` deep, alternating objects and arrays (what nested() builds, without recursion)."""
    pairs, odd = divmod(depth, 2)
    return "[" * odd + '[{"a":' * pairs + leaf + "}]" * pairs + "]" * odd


def paths_of(doc: Any, prefix: tuple[Any, ...] = (), limit: int = 200) -> list[tuple[Any, ...]]:
    """Every path (keys and list indices) in a JSON document, the root first, at most `limit`."""
    found: list[tuple[Any, ...]] = [prefix]
    stack = [(doc, prefix)]
    while stack and len(found) < limit:
        node, here = stack.pop()
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in children:
            found.append((*here, key))
            stack.append((child, (*here, key)))
    return found


def set_at(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def mutate_json(rng: random.Random, body: bytes) -> tuple[bytes, str]:
    """Parse a body and change one thing in it: a value, a key, a deletion, a wrapping; re-serialised."""
    try:
        doc = json.loads(body)
        paths_of(doc)
    except (ValueError, RecursionError):
        return mutate_bytes(rng, body)
    path = rng.choice(paths_of(doc))
    how = rng.randrange(6)
    raw = None
    if how <= 2:
        value, raw = random_value(rng)
        doc = set_at(doc, path, RAW if raw else value)
        note = f"set {short(path)} to {raw or short(value)}"
    elif how == 3 and path:
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
        note = f"delete {short(path)}"
    elif how == 4:
        doc = set_at(doc, path, [doc] if not path else rng.choice([[{}], {"": None}, [set_at({}, (), None)]]))
        note = f"wrap at {short(path)}"
    else:
        doc = {rng.choice(["ticket", "agent", "event", "detail", "", "\x00", "\ud800"]): doc, "x": rng.random()}
        note = "rewrap root"
    try:
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, None, 1]))
    except RecursionError:  # a deep value set into a deep document: send the deep part alone
        text = deep_text(3000)
    if raw:
        text = text.replace(json.dumps(RAW), raw)
    return text.encode("utf-8", "surrogatepass"), note


def mutate_bytes(rng: random.Random, body: bytes) -> tuple[bytes, str]:  # noqa: PLR0911 - one return per kind of change
    """A byte-level change: flip, insert, delete, truncate, splice a token, duplicate keys, re-encode."""
    how = rng.randrange(9)
    data = bytearray(body)
    where = rng.randrange(len(data) + 1)
    if how == 0 and data:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data), "bit flips"
    if how == 1:
        return bytes(data[:where]), f"truncated at {where}"
    if how == 2:
        token = rng.choice(TOKENS)
        return bytes(data[:where]) + token + bytes(data[where:]), f"token {token[:12]!r} at {where}"
    if how == 3:
        cut = rng.randint(1, 40)
        return bytes(data[:where]) + bytes(data[where + cut:]), f"cut {cut} at {where}"
    if how == 4:
        return bytes(data[:where]) + rng.randbytes(rng.randint(1, 16)) + bytes(data[where:]), f"noise at {where}"
    if how == 5:
        encoding = rng.choice(ENCODINGS)
        text = body.decode("utf-8", "replace")
        return text.encode(encoding, "replace"), f"re-encoded {encoding}"
    if how == 6:
        return rng.choice([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff"]) + body, "BOM"
    if how == 7:
        dup = rng.choice([b'"ticket": null, ', b'"ticket": {"id": "1"}, ', b'"event_id": "x", "event_id": 1, ',
                          b'"id": [], ', b'"detail": 1, ', b'"agent": "", '])
        return body.replace(b"{", b"{" + dup, rng.randint(1, 3)), "duplicate keys"
    pad = rng.choice([b" ", b"\n", b"\t", b"\r", b"\x0b", b"\xc2\xa0"]) * rng.randint(1, 20_000)
    return (pad + body) if rng.random() < 0.5 else (body + pad), "padding"


def random_body(rng: random.Random) -> tuple[bytes, str]:
    """A body from nothing: random bytes, JSON-ish characters, or one of robustness's non-JSON texts."""
    how = rng.randrange(5)
    if how == 0:
        return rng.randbytes(rng.choice([0, 1, 2, 7, 64, 512, 4096])), "random bytes"
    if how == 1:
        alphabet = '{}[]":,0123456789.eE+-tfnrual \\/\n'
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300))).encode(), "json-ish"
    if how == 2:
        return rng.choice(NOT_JSON).format(n=rng.randrange(10**6)).encode(), "not json"
    if how == 3:
        return deep_text(rng.randint(1, 20_000)).encode(), "deep"
    return rng.choice(NOT_UTF8) * rng.randint(1, 50), "not utf-8"


@dataclass
class Case:
    """One request, what it is (for the failure message), and what the answer must be."""

    name: str
    source: str
    body: bytes
    headers: list[tuple[str, str]]
    expect: str  # "refused": 401/413, nothing stored; "signed": parsed and stored; "maybe"; "nostore"; "route"
    path: str = ""
    method: str = "POST"
    content_type: str | None = "application/json"
    chunked: bool = False
    environ: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    """The app under fuzz in this process, and the means to sign and count."""

    app: Flask
    intake: Intake
    db_path: str
    reader: sqlite3.Connection
    sig_mutations: list[tuple[str, Any, frozenset[str]]]

    @classmethod
    def build(cls, folder: Path) -> Bench:
        db_path = str(folder / "fuzz.db")
        url = fresh_database(f"sqlite:///{db_path}")
        settings = replace(make_settings(url), log_level="ERROR")  # a 401 logs a warning: 100,000 lines of noise
        clock = Clock()
        app = create_app(settings, clock=clock, background=False)
        app.testing = False  # an exception must become the 500 a sender would see, not a test-client traceback
        store: Store = app.extensions["webhook"].store
        intake = Intake(app.test_client(), settings, store, clock)
        reader = sqlite3.connect(db_path, check_same_thread=False)
        return cls(app, intake, db_path, reader, mutations(intake))

    def close(self) -> None:
        self.reader.close()
        self.intake.store.close()

    def max_id(self) -> int:
        return int(self.reader.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])

    def rows_after(self, pk: int) -> list[int]:
        """Ids of the rows past `pk` (an id can be spent without a row: a duplicate's INSERT skipped by its key)."""
        return [int(r[0]) for r in self.reader.execute("SELECT id FROM events WHERE id > ? ORDER BY id", (pk,))]

    def sign(self, source: str, body: bytes, **kwargs: Any) -> dict[str, str]:
        return self.intake.sign(source, body, **kwargs)

    # ---------------------------------------------------------------- one case

    def make(self, rng: random.Random, index: int) -> Case:
        """Build case `index` from its own generator."""
        source = rng.choice(SOURCES)
        roll = rng.random()
        ids = itertools.count(index * 100)
        if roll < 0.36:
            return self.bad_signature(rng, source, ids)
        if roll < 0.78:
            return self.signed_body(rng, source, ids)
        if roll < 0.935:
            return self.transport(rng, source, ids)
        if roll < 0.95:
            return self.size(rng, source, ids)
        if roll < 0.97:
            return self.route(rng, source, ids)
        return self.maybe(rng, source, ids)

    def base_body(self, rng: random.Random, source: str, ids: Iterator[int]) -> bytes:
        roll = rng.random()
        if roll < 0.45:
            return good_body(source, rng, ids, self.intake.clock())[0]
        if roll < 0.85:
            bodies = BadBodies(source, self.intake.settings.sources[source].mapping, rng, self.intake.clock(), ids)
            return bodies.make().body
        return random_body(rng)[0]

    def mutated(self, rng: random.Random, body: bytes) -> tuple[bytes, str]:
        notes = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            body, note = (mutate_json if rng.random() < 0.55 else mutate_bytes)(rng, body)
            notes.append(note)
        if len(body) > LIMIT:
            body = body[:LIMIT]
            notes.append("cut to the limit")
        return body, "; ".join(notes)

    def bad_signature(self, rng: random.Random, source: str, ids: Iterator[int]) -> Case:
        body = self.base_body(rng, source, ids) or b"{}"  # robustness's tamper needs a byte to change
        scheme = SCHEME_OF[source]
        request = Request(source, scheme, body, self.sign(source, body))
        if rng.random() < 0.5:
            applicable = [(n, fn) for n, fn, schemes in self.sig_mutations if scheme in schemes]
            name, mutate = rng.choice(applicable)
            bad = mutate(rng, request)
        else:
            name, bad = self.header_games(rng, request)
        headers = list(bad.headers.items()) + list(rng.choice(FORWARDED).items())
        return Case(f"bad signature {name}: {bad.note}", source, bad.body, headers, "refused",
                    content_type=content_type(rng))

    def header_games(self, rng: random.Random, req: Request) -> tuple[str, Request]:  # noqa: PLR0911 - one return per mutation
        """Mutations of the signature headers beyond robustness's: each leaves the request not validly signed."""
        names = SIGNATURE_HEADERS[req.scheme]
        name = rng.choice(names)
        value = req.headers[name]
        how = rng.randrange(8)
        if how == 0:  # truncated: every scheme's signature or timestamp loses characters (padding is optional)
            bare = value.rstrip("=")
            cut = rng.randint(1, len(bare))
            return "truncate", req.but(f"truncate {name} by {cut}", headers=req.headers | {name: bare[:-cut]})
        if how == 1:  # one character changed, in the alphabet of base64, hex or digits
            where = rng.randrange(len(value))
            new = rng.choice([c for c in "AZaz09+/=-_,." if c.lower() != value[where].lower()])  # hex ignores case
            return "char", req.but(f"{name}[{where}]={new!r}",
                                   headers=req.headers | {name: value[:where] + new + value[where + 1:]})
        if how == 2:  # huge
            filler = rng.choice(["A", "=", "v1,", "0", "\xe9", ","]) * rng.choice([1000, 8000, 60_000])
            new = rng.choice([filler, value + filler, filler + value])
            return "huge", req.but(f"huge {name} ({len(new)})", headers=req.headers | {name: new})
        if how == 3:  # non-ASCII, as a server hands it over (latin-1 of the bytes, mojibake of UTF-8)
            extra = rng.choice(["\xe9", "\xff", "\x00", "ï»¿", "Ã©", "\x1b", "\x7f"])  # \xa0, \x85 are whitespace
            where = rng.randrange(1, len(value))  # to str.strip() and str.split(): a separator, not a change
            return "non-ascii", req.but(f"non-ascii {extra!r} in {name}",
                                        headers=req.headers | {name: value[:where] + extra + value[where:]})
        if how == 4 and req.scheme in TIMESTAMP_HEADER:  # absurd timestamps, generated
            stamp = TIMESTAMP_HEADER[req.scheme]
            new = rng.choice([str(rng.randrange(-(10**30), 10**30)), f"{rng.random() * 1e20:e}",
                              rng.choice(BAD_TIMESTAMPS), f"{rng.randint(0, 99999):04d}-{rng.randint(0, 99):02d}-01"
                              f"T00:00:00{rng.choice(['Z', '+99:00', '-00:00', '+23:59', ''])}"])
            if new == req.headers[stamp]:
                new += "0"
            return "timestamp", req.but(f"timestamp {new[:30]!r}", headers=req.headers | {stamp: new})
        if how == 5:  # the signature of another body
            other = req.body + b" " if rng.random() < 0.5 else req.body[:-1]
            return "other body", req.but("signed another body", headers=self.sign(req.source, other))
        if how == 6:  # wrong base64 alphabet or padding
            sig_name = SIGNATURE_HEADER[req.scheme]
            sig = req.headers[sig_name]
            new = rng.choice([sig.replace("+", "-").replace("/", "_").replace("=", "") + "!", sig + "==", "=" + sig,
                              sig.lower() if sig.lower() != sig else sig + "x",
                              base64.b64encode(sig.encode()).decode()])
            return "base64", req.but(f"bad base64 {new[:12]!r}", headers=req.headers | {sig_name: new})
        garbage = rng.choice(GARBAGE)  # all headers garbage at once
        return "all garbage", req.but("all garbage", headers=dict.fromkeys(names, garbage))

    def signed_body(self, rng: random.Random, source: str, ids: Iterator[int]) -> Case:
        body, note = self.mutated(rng, self.base_body(rng, source, ids))
        headers, how = self.signed_headers(rng, source, body)
        return Case(f"signed mutated body ({how}): {note}", source, body, headers, "signed",
                    content_type=content_type(rng, plain=3))

    def signed_headers(self, rng: random.Random, source: str, body: bytes) -> tuple[list[tuple[str, str]], str]:
        """Correct signature headers, sometimes in another letter case, signed up to the tolerance away, behind a
        proxy (HubSpot signs the URL the proxy saw), or with a query string."""
        tolerance = self.intake.settings.sources[source].tolerance_seconds
        at = self.intake.clock() + timedelta(seconds=rng.choice([0, 0, 0, -tolerance + 1, tolerance - 1, -5]))
        roll = rng.random()
        if source == "hubspot" and roll < 0.15:
            extra = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com"}
            headers = self.sign(source, body, at=at, url="https://hooks.example.com/webhooks/hubspot") | extra
            return list(headers.items()), "behind a proxy"
        headers = self.sign(source, body, at=at)
        if roll < 0.3:
            case = rng.choice([str.lower, str.upper, str.title])
            return [(case(k), v) for k, v in headers.items()], "header case"
        return list(headers.items()), "plain"

    def transport(self, rng: random.Random, source: str, ids: Iterator[int]) -> Case:
        body = self.base_body(rng, source, ids)
        if rng.random() < 0.5:
            body = self.mutated(rng, body)[0]
        headers, _ = self.signed_headers(rng, source, body)
        ctype = content_type(rng)
        roll = rng.random()
        extra: list[tuple[str, str]] = []
        if roll < 0.25:
            extra = [("Content-Encoding", rng.choice(["gzip", "deflate", "br", "identity", "x-bogus"]))]
        elif roll < 0.35:
            extra = [("Accept", rng.choice(["text/html", "*/*", "application/xml"]))]
        elif roll < 0.45:
            extra = [("Expect", "100-continue")]
        elif roll < 0.55:  # a lying Content-Length, as a server passes it on: a cut or missing body fails its check
            length = rng.choice(["0", "1", str(len(body) - 1), str(len(body) + rng.randint(1, 100)), "-1", "abc", "1e3",
                                 "\xe9", str(LIMIT + 2), "9" * 20, " " + str(len(body)), "0x10"])
            if length.strip() != str(len(body)) and body:  # an empty body is read whole whatever the length
                return Case(f"transport Content-Length {length!r} of {len(body)}", source, body, headers, "nostore",
                            content_type=ctype, environ={"CONTENT_LENGTH": length})
        chunked = rng.random() < 0.3
        return Case(f"transport {(ctype or '')[:40]!r} {extra} chunked={chunked}", source, body, headers + extra,
                    "signed", content_type=ctype, chunked=chunked)

    def size(self, rng: random.Random, source: str, ids: Iterator[int]) -> Case:
        size = rng.choice([LIMIT - 1, LIMIT, LIMIT + 1, LIMIT + 2, LIMIT + 4096, 2 * LIMIT, 1, 0])
        base = good_body(source, rng, ids, self.intake.clock())[0]
        filler = rng.choice([b" ", b"\n", b"x", b"\x00", b"\xff"])
        body = (base + filler * max(size - len(base), 0))[:size] if rng.random() < 0.6 else filler * size
        signed = rng.random() < 0.7
        headers = self.signed_headers(rng, source, body)[0] if signed else [(SIGNATURE_HEADER[SCHEME_OF[source]],
                                                                              "v1,AAAA")]
        chunked = rng.random() < 0.4
        expect = "signed" if signed else "refused"
        return Case(f"size {size} signed={signed} chunked={chunked} filler={filler!r}", source, body, headers, expect,
                    chunked=chunked)

    def route(self, rng: random.Random, source: str, ids: Iterator[int]) -> Case:
        body = good_body(source, rng, ids, self.intake.clock())[0]
        headers = list(self.sign(source, body).items())
        if rng.random() < 0.5:
            name = rng.choice([source.upper(), source + " ", "x" * rng.randint(1, 300), "z\xe9ndesk", "%00", "..",
                               "".join(rng.choice("abcXYZ019-_.~") for _ in range(rng.randint(1, 30)))])
            return Case(f"route {name[:30]!r}", source, body, headers, "route", path=f"/webhooks/{name}")
        method = rng.choice(["GET", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND"])
        return Case(f"route {method}", source, body, headers, "route", method=method)

    def maybe(self, rng: random.Random, source: str, ids: Iterator[int]) -> Case:
        """Duplicated signature headers: the same value twice, or a good and a bad one, in either order. Whether
        the copy that is read is the good one is up to the WSGI layer: either answer is right, nothing else."""
        body = self.base_body(rng, source, ids)
        headers = self.sign(source, body)
        name = rng.choice(SIGNATURE_HEADERS[SCHEME_OF[source]])
        other = rng.choice([headers[name], rng.choice(GARBAGE), headers[name][:-2]])
        pairs = [(k, v) for k, v in headers.items() if k != name]
        dup = [(name, headers[name]), (name, other)]
        rng.shuffle(dup)
        return Case(f"duplicated {name} (other {other[:12]!r})", source, body, pairs + dup, "maybe")

    # ---------------------------------------------------------------- sending and checking

    def send(self, case: Case) -> Any:
        path = case.path or f"/webhooks/{case.source}"
        options: dict[str, Any] = {"input_stream": io.BytesIO(case.body), "content_length": len(case.body),
                                   "environ_overrides": dict(case.environ)}
        headers = list(case.headers)
        if case.chunked:  # what gunicorn passes on for Transfer-Encoding: chunked: no length, a terminated stream
            options.pop("content_length")
            options["environ_overrides"]["wsgi.input_terminated"] = True
            headers.append(("Transfer-Encoding", "chunked"))
        if case.content_type is not None:
            options["content_type"] = case.content_type
        return self.intake.client.open(path, method=case.method, headers=headers, **options)

    def run(self, case: Case) -> str | None:  # noqa: PLR0911 - one early return per invariant
        """Send one case and check the answer and the database; return what is wrong, or None."""
        before = self.max_id()
        response = self.send(case)
        status = response.status_code
        written = self.rows_after(before)
        stored = len(written)
        if status >= 500:
            return f"answered {status}: {response.data[:300]!r}"
        answer = response.get_json(silent=True)
        if status >= 400:
            if not isinstance(answer, dict) or not answer.get("error") or not answer.get("detail"):
                return f"answered {status} without a JSON error and detail: {response.data[:200]!r}"
            if answer["error"] not in ERROR_CODES.get(status, {answer["error"]}):
                return f"answered {status} with error {answer['error']!r}"
        if status == 401 and not REASON_RE.fullmatch(answer["detail"]):
            return f"401 detail does not name a check: {answer['detail'][:200]!r}"
        if case.expect == "route":
            allowed = (200, 404, 405, 308) if case.method == "OPTIONS" else (404, 405, 308)  # Flask answers OPTIONS
            return None if status in allowed and not stored else f"route answered {status}, stored {stored}"
        if case.expect in ("refused", "nostore") or len(case.body) > LIMIT or (case.expect, status) == ("maybe", 401):
            if stored:
                return f"answered {status} and stored {stored} row(s); expected nothing stored"
            wanted = {413} if len(case.body) > LIMIT else {401} if case.expect in ("refused", "maybe") else {
                400, 401, 413}
            if status not in wanted:
                return f"answered {status}, expected {sorted(wanted)}: {response.data[:200]!r}"
            return self.echo_check(case, response) if status == 401 else None
        return self.check_signed(case, response, before, written)

    def echo_check(self, case: Case, response: Any) -> str | None:
        text = response.get_data(as_text=True)
        for name, value in case.headers:
            if name.lower() == SIGNATURE_HEADER[SCHEME_OF[case.source]].lower():
                bare = value.strip().removeprefix("v1,").removeprefix("sha256=")
                if len(bare) >= 8 and bare in text:
                    return "the 401 echoes the signature header"
        return None

    def check_signed(self, case: Case, response: Any, before: int, written: list[int]) -> str | None:  # noqa: PLR0911 - one early return per invariant
        """A correctly signed body: the answer follows events.parse, and every row it names is stored as said."""
        status = response.status_code
        source = self.intake.settings.sources[case.source]
        try:
            items = parse(case.body, source.mapping,
                          Envelope(case.source, self.intake.clock(),
                                   unsigned_time=source.scheme not in TIMESTAMPED_SCHEMES),
                          self.intake.settings.agents)
        except Exception as exc:
            return f"events.parse raised {type(exc).__name__}: {exc}"
        invalid = any(isinstance(i, InvalidItem) for i in items)
        answer = response.get_json(silent=True) or {}
        if status not in ((400,) if invalid else (200, 202)):
            return f"answered {status} {response.data[:200]!r}; parse says invalid={invalid}"
        named = [row["id"] for key in ("accepted", "duplicates", "invalid") for row in answer.get(key, [])]
        if sorted({pk for pk in named if pk is not None and pk > before}) != written:
            return f"answer names rows {named} but rows {written} were written"
        if invalid:
            if not answer.get("invalid"):  # dedupe first: an id already stored valid keeps its row (see report)
                return None if answer.get("duplicates") else "400 without the invalid rows"
            first = answer["invalid"][0]["id"]
            row = self.reader.execute("SELECT e.state, d.raw_body, e.detail FROM events e JOIN deliveries d "
                                      "ON d.id = e.delivery WHERE e.id = ?", (first,)).fetchone()
            if row is None or row[0] != "invalid" or not row[2]:
                return f"invalid row {first} not stored as invalid with a detail: {row and row[0]}"
            if first > before and bytes(row[1]) != case.body:
                return f"invalid row {first} does not hold the raw body"
            if first <= before and first not in [d["id"] for d in answer["duplicates"]]:
                return f"invalid row {first} is an older row but not named a duplicate"
        elif not named:
            return f"answered {status} naming no event"
        return None


# ================================================================ intake: the run


@dataclass
class ShardResult:
    worker: int
    done: int = 0
    failures: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    slowest: tuple[float, int, str] = (0.0, -1, "")
    seconds: float = 0.0
    states: dict[str, int] = field(default_factory=dict)


MAX_FAILURES = 40


def run_cases(bench: Bench, opts: Options, indices: Iterator[int] | list[int], result: ShardResult,
              progress: Any = None) -> ShardResult:
    """Run the given cases in this process, recording failures with their replay hint."""
    start = time.monotonic()
    for index in indices:
        if progress is not None:
            progress[0], progress[1] = index, time.monotonic()
        began = time.perf_counter()
        rng = case_rng(opts.seed, "intake", index)
        name = "?"
        try:
            with watchdog(opts.case_seconds * 4):
                case = bench.make(rng, index)
                name = case.name
                problem = bench.run(case)
                result.kinds[case.expect + ":" + case.name.split(":")[0].split(" (")[0].split(" ")[0]] += 1
        except CaseTimeout as exc:
            problem = f"hang: {exc}"
        except Exception as exc:  # a failure of the fuzz itself or of the app under it: report the case
            problem = f"raised {type(exc).__name__}: {str(exc)[:300]}"
        elapsed = time.perf_counter() - began
        if elapsed > result.slowest[0]:
            result.slowest = (elapsed, index, name[:120])
        if problem is None and elapsed > opts.case_seconds:
            problem = f"took {elapsed:.1f} s (limit {opts.case_seconds:g} s)"
        result.done += 1
        if problem is not None and len(result.failures) < MAX_FAILURES:
            result.failures.append(f"case {index} [{opts.replay_hint(index)}] {name[:200]}: {problem}")
        if time.monotonic() - start > opts.budget_seconds:
            result.failures.append(f"budget of {opts.budget_seconds:g} s spent after {result.done} case(s)")
            break
    result.seconds = time.monotonic() - start
    result.states = bench.intake.store.counts()
    return result


def _intake_shard(worker: int, workers: int, folder: str, opts: Options, out: Any, progress: Any) -> None:
    """A worker process: its own app and database, every `workers`-th case from `worker`."""
    result = ShardResult(worker)
    try:
        bench = Bench.build(Path(folder))
        try:
            run_cases(bench, opts, range(worker, opts.cases, workers), result, progress)
            leftovers = bench.reader.execute(
                "SELECT count(*) FROM events WHERE state IN ('received', 'processing') "
                "OR (state = 'failed' AND detail LIKE 'internal error%')").fetchone()[0]
            if leftovers:
                result.failures.append(f"{leftovers} event(s) left unfinished or failed with an internal error")
        finally:
            bench.close()
    except Exception as exc:
        result.failures.append(f"worker {worker} broke: {type(exc).__name__}: {exc}")
    out.put(result)


def run_sharded(opts: Options, folder: Path) -> list[ShardResult]:
    """Run the intake cases in `opts.workers` spawned processes; a silent or late worker is stopped and named."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads or engines inherited by fork
    out = ctx.Queue()
    procs = []
    for worker in range(opts.workers):
        progress = ctx.Array("d", [-1.0, time.monotonic()], lock=False)
        sub = folder / f"worker{worker}"
        sub.mkdir()
        proc = ctx.Process(target=_intake_shard, args=(worker, opts.workers, str(sub), opts, out, progress),
                           daemon=True)
        proc.start()
        procs.append((proc, progress))
    results: list[ShardResult] = []
    deadline = time.monotonic() + opts.budget_seconds + 60  # the workers stop themselves at the budget
    stall = max(opts.case_seconds * 8, 60)  # the watchdog inside cuts a hang at 4 x case_seconds
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=1))
            continue
        except queue.Empty:
            pass
        now = time.monotonic()
        for n, (proc, progress) in enumerate(procs):
            if any(r.worker == n for r in results):
                continue
            index = int(progress[0])
            hint = opts.replay_hint(index) if index >= 0 else f"FUZZ_SEED={opts.seed} (before the first case)"
            if now - progress[1] > stall and proc.is_alive():
                proc.kill()
                results.append(ShardResult(n, failures=[f"worker {n} hung on case {index} [{hint}] for {stall:g} s"]))
            elif not proc.is_alive() and out.empty():
                time.sleep(1)
                if out.empty():
                    results.append(ShardResult(n, failures=[f"worker {n} died (exit {proc.exitcode}) near case "
                                                            f"{index} [{hint}]"]))
            elif now > deadline:
                proc.kill()
                results.append(ShardResult(n, failures=[f"worker {n} over the time cap near case {index} [{hint}]"]))
    for proc, _ in procs:
        proc.join(5)
    return results


def test_intake_fuzz_never_5xx_never_stores_unsigned(options: Options, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """At least 100,000 hostile requests (FUZZ_CASES); every one keeps the HTTP contract and the storage rules."""
    started = time.monotonic()
    if options.only:
        bench = Bench.build(tmp_path)
        try:
            results = [run_cases(bench, options, list(options.only), ShardResult(0))]
        finally:
            bench.close()
    else:
        results = run_sharded(options, tmp_path)
    wall = time.monotonic() - started
    done = sum(r.done for r in results)
    kinds: Counter[str] = sum((r.kinds for r in results), Counter())
    failures = [f for r in results for f in r.failures]
    slowest = max(r.slowest for r in results)
    with capsys.disabled():
        print(f"[fuzz] intake: {done} case(s) in {wall:.1f} s on {len(results)} worker(s), seed {options.seed}; "
              f"slowest case {slowest[1]} took {slowest[0] * 1000:.0f} ms ({slowest[2][:80]})")
        groups = Counter({k.split(":")[0]: 0 for k in kinds})
        for key, count in kinds.items():
            groups[key.split(":")[0]] += count
        print("[fuzz] intake cases by expectation: " + ", ".join(f"{k} {v}" for k, v in sorted(groups.items())))
        states: Counter[str] = sum((Counter(r.states) for r in results), Counter())
        print("[fuzz] rows stored by state: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    assert not failures, f"{len(failures)} failing case(s) (seed {options.seed}):\n" + "\n".join(failures[:40])
    wanted = len(options.only) or options.cases
    assert done == wanted, f"ran {done} of {wanted} cases"
    if not options.only and options.cases >= 10_000:  # every generator had its turn
        assert {"refused", "signed", "nostore", "route", "maybe"} <= set(groups), groups


# ================================================================ replay --file


EXPORT_KEYS = ("id", "source", "event_id", "state", "detail", "occurred_at", "received_at", "headers", "message_id",
               "signed_at", "raw_body_base64", "raw_body")


def export_of(rng: random.Random, n: int) -> dict[str, Any]:
    """A line as `events export` writes it, for an event the database does not hold."""
    body = json.dumps({"event_id": f"fz-{n}-{rng.getrandbits(40):x}", "occurred_at": "2026-11-23T10:00:00Z",
                       "agent": {"email": "jane.agent@example.com"},
                       "ticket": {"id": str(n), "status": rng.choice(["open", "payment_in_progress", "solved"])}})
    line = {"id": n, "source": rng.choice(["inhouse", "helpdesk"]), "event_id": json.loads(body)["event_id"],
            "state": rng.choice(["dry_run", "invalid", "failed"]), "detail": "", "occurred_at": "2026-11-23T10:00:00Z",
            "received_at": "2026-11-23T10:00:01+00:00", "headers": {"Content-Type": "application/json"},
            "message_id": None, "signed_at": None, "raw_body_base64": base64.b64encode(body.encode()).decode(),
            "raw_body": body}
    return line


BAD_TEXT = ("", " ", 0, 1.5, True, None, [], {}, ["inhouse"], {"a": 1}, "\x00", "\ud800", "x" * 100_000)
BAD_B64 = ("%%%", "YQ=", "====", "a", "\xe9", "YWJj\n", "Y W J j", 5, None, [], "\ud800", "A" * 99_999)
BAD_TIME = ("yesterday", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-02-30T00:00:00Z", 1e300,
            -1e17, 10**30, True, {}, [], "NaN", "\ud800", "9" * 5000)


def replay_line(rng: random.Random, n: int) -> tuple[bytes, str]:
    """One line of a replay file and what it is: "good" (must be replayed), "bad" (must be named), or "any"."""
    roll = rng.random()
    line = export_of(rng, n)
    if roll < 0.2:
        return json.dumps(line).encode(), "good"
    if roll < 0.55:  # one field given a value that cannot be used
        key = rng.choice(["source", "event_id", "raw_body_base64", "received_at", "signed_at"])
        bad = {"source": BAD_TEXT, "event_id": BAD_TEXT, "raw_body_base64": BAD_B64, "received_at": BAD_TIME,
               "signed_at": BAD_TIME}[key]
        value = rng.choice(bad)
        line[key] = value
        if rng.random() < 0.3:
            line.pop("raw_body", None)
        if key in ("source", "event_id"):
            usable = isinstance(value, str) and value != ""
        elif key == "raw_body_base64":
            usable = value == "====" or (not isinstance(value, str) and "raw_body" in line)  # raw_body instead
        else:
            usable = value in ({}, [])  # an empty value means "unknown", as in an export
        return json.dumps(line).encode("utf-8", "surrogatepass"), "any" if usable else "bad"
    if roll < 0.75:  # any field, any value, or dropped
        token = None
        for _ in range(rng.randint(1, 4)):
            key = rng.choice(EXPORT_KEYS)
            if rng.random() < 0.3:
                line.pop(key, None)
            else:
                value, raw = random_value(rng)
                line[key] = value if raw is None or token else RAW
                token = token or raw
        text = json.dumps(line)
        return text.replace(json.dumps(RAW), token or "null").encode("utf-8", "surrogatepass"), "any"
    raw, _ = mutate_bytes(rng, json.dumps(line).encode()) if roll < 0.9 else random_body(rng)
    raw = raw.replace(b"\n", b" ")
    return raw, "any"


def replay_file(rng: random.Random, index: int, folder: Path) -> tuple[Path, list[str]]:
    """A replay file (or a directory, or nothing) and the kind of each of its lines, as the reader numbers them."""
    path = folder / f"replay{index}.jsonl"
    roll = rng.random()
    if roll < 0.03:
        data = rng.choice([b"", b"\n\n", b"   \n\t\n", b"\xef\xbb\xbf"])
        path.write_bytes(data)
        return path, ["bad"] if data.strip() else ["blank"] * data.count(b"\n")
    if roll < 0.05:
        path.mkdir()
        return path, []
    if roll < 0.07:
        return path, []  # missing
    ending = rng.choice([b"\n", b"\r\n", b"\n\n"])
    kinds: list[str] = []
    data = b""
    for n in range(rng.randint(1, 8)):
        if rng.random() < 0.08:
            raw, kind = rng.choice([b"", b"  ", b"\r"]), "blank"
        else:
            raw, kind = replay_line(rng, index * 100 + n)
            raw = raw.replace(b"\n", b" ")  # one line is one line
            if rng.random() < 0.03:  # a huge line: padded with JSON whitespace (same kind) or with junk (bad)
                junk = rng.random() < 0.5
                raw += (b"x" if junk else b" ") * rng.randint(100_000, 2_000_000)
                kind = "bad" if junk and kind != "any" else kind
        data += raw + ending
        kinds.append(kind if raw.strip() else "blank")
        if ending == b"\n\n":
            kinds.append("blank")
    if rng.random() < 0.3:  # no newline at the end of the file
        data = data[: -len(ending)]
        if ending == b"\n\n":
            kinds.pop()
    path.write_bytes(data)
    return path, kinds


SUMMARY_RE = re.compile(r"(\d+) replayed(?: \(dry run\))?, (\d+) failed, (\d+) unreadable line\(s\)")


@pytest.fixture
def replay_app(sqlite_url: str, clock: Clock) -> Iterator[Flask]:
    app = create_app(replace(make_settings(sqlite_url), log_level="ERROR"), clock=clock, background=False)
    yield app
    app.extensions["webhook"].store.close()


def test_replay_file_reader_fuzz(options: Options, replay_app: Flask, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`flask replay --file` on hostile files: no traceback, bad lines named, exit 1, imports marked as such."""
    runner: FlaskCliRunner = replay_app.test_cli_runner()
    store: Store = replay_app.extensions["webhook"].store
    started = time.monotonic()
    failures: list[str] = []
    lines_seen = 0
    for index in range(options.replay_files):
        rng = case_rng(options.seed, "replay", index)
        path, kinds = replay_file(rng, index, tmp_path)
        lines_seen += len(kinds)
        hint = f"replay file {index} [FUZZ_SEED={options.seed}]"
        before = max((r.id for r in store.list(limit=1)), default=0)
        began = time.perf_counter()
        with watchdog(options.case_seconds * 4):
            result = runner.invoke(args=["replay", "--file", str(path), *(["--dry-run"] if index % 5 == 0 else [])])
        elapsed = time.perf_counter() - began
        problem = check_replay(result, path, kinds, elapsed, options)
        if problem is None and index % 5:
            problem = check_imports(store, before)
        if problem:
            failures.append(f"{hint}: {problem}")
            if len(failures) >= MAX_FAILURES:
                break
    with capsys.disabled():
        print(f"[fuzz] replay --file: {options.replay_files} file(s), {lines_seen} line(s) in "
              f"{time.monotonic() - started:.1f} s")
    assert not failures, "\n".join(failures)


def check_replay(result: Any, path: Path, kinds: list[str], elapsed: float, options: Options) -> str | None:  # noqa: PLR0911 - one early return per invariant
    """The CLI's answer for one file: a usage error for what is not a file, else a summary that counts right."""
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"raised {type(result.exception).__name__}: {result.exception}"
    if "Traceback" in output:
        return f"printed a traceback: {output[-500:]}"
    if elapsed > options.case_seconds:
        return f"took {elapsed:.1f} s"
    if not path.is_file():
        ok = result.exit_code == 2 and ("does not exist" in output or "is a directory" in output)
        return None if ok else f"not a file: exit {result.exit_code}, {output[-300:]!r}"
    summary = SUMMARY_RE.search(output)
    if summary is None:
        return f"no summary line: exit {result.exit_code}, {output[-300:]!r}"
    replayed, failed, unreadable = map(int, summary.groups())
    for number, kind in enumerate(kinds, start=1):
        if kind == "bad" and not re.search(rf"^line {number}\s+.*unreadable\s+\S", output, re.MULTILINE):
            return f"bad line {number} is not named with its reason: {output[-600:]!r}"
    if replayed + unreadable > sum(k != "blank" for k in kinds):
        return f"{replayed} replayed + {unreadable} unreadable of {len(kinds)} line(s)"
    if unreadable < kinds.count("bad"):
        return f"{unreadable} unreadable, {kinds.count('bad')} bad line(s) generated"
    if result.exit_code != (1 if unreadable or failed else 0):
        return f"exit {result.exit_code} with {failed} failed and {unreadable} unreadable"
    return None


IMPORT_MARK = "x-crm-mute-bridge-import"


def check_imports(store: Store, before: int) -> str | None:
    """Rows the import added are not passed off as received over HTTP: each carries the import mark."""
    for record in store.list(limit=100):  # newest first; one file adds at most 8
        if record.id <= before:
            break
        headers = dict(store.delivery(record.delivery).headers) if record.delivery else {}
        if IMPORT_MARK not in headers:
            return f"imported row {record.id} ({record.state}) carries no import mark: {headers}"
        if record.state in ("received", "processing"):
            return f"imported row {record.id} left {record.state}"
    return None


def test_replay_reader_reads_every_line_of_a_hostile_file(options: Options, tmp_path: Path) -> None:
    """read_export alone, on one large file of every kind of line: each is returned or named, none raises."""
    rng = case_rng(options.seed, "replay-reader", 0)
    lines = [replay_line(rng, n) for n in range(20_000)]
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join(raw for raw, _ in lines) + b"\n")
    good, bad = read_export(path)
    assert len(good) + len(bad) == sum(1 for raw, _ in lines if raw.strip())
    named = {int(where.split()[1]) for where, _ in bad}
    missing = [n for n, (_, kind) in enumerate(lines, start=1) if kind == "bad" and n not in named]
    assert not missing, f"bad lines not reported (seed {options.seed}): {missing[:10]}"
    assert all(why for _, why in bad)
    assert all(isinstance(line["body"], bytes) and isinstance(line["source"], str) for line in good)


def test_export_lines_read_back_as_themselves(replay_app: Flask, tmp_path: Path) -> None:
    """The reader's happy path: a line written by `events export` comes back with the same body and times."""
    store: Store = replay_app.extensions["webhook"].store
    [saved] = store.save(NewDelivery(source="inhouse", received_at=T0, raw_body=b"\xff\x00body", headers={"A": "b"},
                                     signed_at=T0, message_id="m"),
                         [NewEvent(source="inhouse", event_id="e1", state="invalid", detail="x", received_at=T0)])
    record = store.get(saved.id)  # type: ignore[arg-type]
    assert record is not None
    delivery = store.delivery(record.delivery)
    assert delivery is not None
    path = tmp_path / "one.jsonl"
    lines = [*export_lines(delivery, [record]), export_of(random.Random(1), 1)]  # and a line from before deliveries
    path.write_bytes(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    good, bad = read_export(path)
    assert bad == []
    assert (good[0]["body"], good[0]["signed_at"], good[0]["event_id"], good[0]["headers"]) == (
        b"\xff\x00body", T0, "e1", {"A": "b"})
    assert good[1]["body"] == lines[2]["raw_body"].encode()


# ================================================================ config loader


def toml_value(value: Any) -> str:  # noqa: PLR0911 - one return per TOML type
    """The TOML text of a value (enough of TOML for the config and the fuzz's values)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string, bar a few escapes
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_text(doc: dict[str, Any]) -> str:
    """A document as TOML: every value inline under its dotted key, arrays of tables as [[...]]."""
    out: list[str] = []
    for key, value in doc.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for table in value:
                out.append(f"[[{json.dumps(key)}]]")
                out += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
        else:
            out.insert(0, f"{json.dumps(key)} = {toml_value(value)}")
    return "\n".join(out) + "\n"


CONFIG_VALUES = (0, -1, -(2**63), 2**63 - 1, 10**30, 0.0, -0.5, 1e308, math.inf, -math.inf, math.nan, True, False, "",
                 "x" * 100_000, "\x00", "generic", "standard", "*", [], [1, "a"], [[[[]]]], {}, {"scheme": "standard"},
                 {"ticket_id": 1}, datetime(2026, 1, 1), ["a", ""], [{"status": "x"}], "\u202e", "ünïcode")
NUMERIC_KEYS = {("intake", "max_body_bytes"), ("intake", "trusted_proxies"), ("retention", "keep_days"),
                *(("processing", k) for k in ("max_event_age_seconds", "retry_budget_seconds", "worker_threads",
                                              "worker_queue_size", "sweep_interval_seconds", "stale_claim_seconds"))}
ENV_VALUES = ("", " ", "true", "false", "TRUE", "maybe", "1", "0", "\udcff\udcfe", "x" * 50_000, "json", "plain",
              "debug", "TRACE", "eu_west_1", "mypurecloud.ie", "not a region", "https://", "\u00e9", ",,,", " , ",
              "whsec_", "whsec_!!!", "postgres://", "sqlite:///:memory:")


def config_case(rng: random.Random, index: int, folder: Path, base: dict[str, Any]) -> tuple[str, dict[str, str],
                                                                                              str | None, str]:
    """A config file (or a path that is not one), an environment, the key a problem must name (if known), a note."""
    env = SECRETS | {"GENESYS_DRY_RUN": "true"}
    path = folder / f"c{index}.toml"
    doc = json.loads(json.dumps(base))  # a deep copy of the shipped config as plain data
    roll = rng.random()
    expect: str | None = None
    if roll < 0.15:
        where = bad_file(rng, path)
        return where, env, None, bad_file_note(Path(where))
    if roll < 0.55:
        expect, note = wrong_number(rng, doc)
    elif roll < 0.85:
        note = scramble(rng, doc)
    else:
        note = scramble_env(rng, env)
    try:
        text = toml_text(doc)
    except TypeError:
        text = CONFIG_TEXT.decode()
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return str(path), env, expect, note


def bad_file(rng: random.Random, path: Path) -> str:
    """A path whose content is hardly TOML, or that is no file at all."""
    how = rng.randrange(10)
    if how < 7:  # bytes: the shipped file mutated, or from nothing
        path.write_bytes((mutate_bytes(rng, CONFIG_TEXT) if how < 5 else random_body(rng))[0])
        return str(path)
    if how == 7:
        kind = rng.randrange(3)
        if kind == 0:
            path.mkdir()
        elif kind == 1:
            return str(path.parent / "missing" / "x.toml")
        else:
            return str(path) + "\x00"  # no environment can carry a NUL, but an argument can
        return str(path)
    if how == 8:
        path.write_bytes(b"a = " + b"[" * rng.choice([100, 5_000, 100_000]) + b"]" * 3)
    else:
        data = CONFIG_TEXT.decode().encode(rng.choice(["utf-16", "utf-32", "latin-1"]), "replace")
        path.write_bytes(rng.choice([data, b"x = " + b"9" * rng.choice([20, 5000, 1_000_000])]))
    return str(path)


def bad_file_note(path: Path) -> str:
    return f"not a file: {str(path)[-30:]!r}" if not path.is_file() else f"bytes {path.read_bytes()[:40]!r}"


def wrong_number(rng: random.Random, doc: dict[str, Any]) -> tuple[str | None, str]:
    """A knob given a wrong or edge value; the key a problem must name when the value is surely wrong."""
    key = rng.choice(sorted(NUMERIC_KEYS))
    value = rng.choice([v for v in CONFIG_VALUES if not isinstance(v, int) or isinstance(v, bool) or v < 0]
                       + [math.nan, math.inf, -math.inf, 10**30, 2**63 - 1])
    doc.setdefault(key[0], {})[key[1]] = value
    wrong = (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
             or value < 0)  # huge finite values are the operator's business
    return (".".join(key) if wrong else None), f"{'.'.join(key)} = {toml_value(value)[:30]}"


def scramble(rng: random.Random, doc: dict[str, Any]) -> str:
    """Any value anywhere, unknown keys, deletions."""
    notes = []
    for _ in range(rng.randint(1, 4)):
        where = rng.choice(paths_of(doc, limit=400)[1:])
        how = rng.randrange(3)
        if how == 0:
            set_at(doc, where, rng.choice(CONFIG_VALUES))
        elif how == 1 and isinstance(_get(doc, where[:-1]), dict):
            del _get(doc, where[:-1])[where[-1]]
        elif isinstance(target := _get(doc, where), dict):
            target[rng.choice(["unknown", "Scheme", "mapping ", "x" * 300, "\u00e9"])] = 1
        notes.append(f"{how}@{where}")
    return "; ".join(notes)


def scramble_env(rng: random.Random, env: dict[str, str]) -> str:
    """Variables dropped or given odd values (surrogate-escaped bytes, huge, empty, wrong words)."""
    for _ in range(rng.randint(1, 4)):
        name = rng.choice([*SECRETS, "GENESYS_DRY_RUN", "LOG_FORMAT", "LOG_LEVEL", "GENESYS_REGION",
                           "GENESYS_CLIENT_ID", "GENESYS_API_URL", "METRICS_TOKEN", "DATABASE_URL", "WEBHOOK_CONFIG"])
        if rng.random() < 0.3:
            env.pop(name, None)
        else:
            env[name] = rng.choice(ENV_VALUES)
    return f"env {sorted(env)}"


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


CONFIG_TEXT = Path(CONFIG).read_bytes()


def numbers_of(settings: Settings) -> list[float]:
    """Every number of a Settings, the sources' tolerances included."""
    values = [*vars(settings).values(), *(s.tolerance_seconds for s in settings.sources.values())]
    return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def test_config_loader_fuzz(options: Options, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Settings.from_env on hostile files and environments: a Settings, or ConfigError listing the problems."""
    import tomllib

    base = json.loads(json.dumps(tomllib.loads(CONFIG_TEXT.decode())))
    started = time.monotonic()
    failures: list[str] = []
    outcomes: Counter[str] = Counter()
    for index in range(options.config_cases):
        rng = case_rng(options.seed, "config", index)
        path, env, expect, note = config_case(rng, index, tmp_path, base)
        hint = f"config case {index} [FUZZ_SEED={options.seed}] {note[:120]}"
        began = time.perf_counter()
        problem = None
        try:
            with watchdog(options.case_seconds * 4):
                settings = Settings.from_env(env, config_path=path)
            outcomes["settings"] += 1
            if expect:
                problem = f"accepted, but {expect} is wrong"
            elif not all(math.isfinite(v) for v in numbers_of(settings)):
                problem = "accepted a number that is not finite"
        except ConfigError as exc:
            outcomes["ConfigError"] += 1
            if not exc.problems or not all(isinstance(p, str) and p for p in exc.problems):
                problem = f"ConfigError without problems: {exc.problems!r}"
            elif not all(p.startswith((path, "environment: ")) for p in exc.problems):
                problem = f"a problem names neither the file nor the environment: {exc.problems[:3]}"
            elif expect and not any(f": {expect}:" in p for p in exc.problems):
                problem = f"no problem names {expect}: {exc.problems[:3]}"
        except Exception as exc:
            problem = f"raised {type(exc).__name__}: {str(exc)[:300]}"
        elapsed = time.perf_counter() - began
        if problem is None and elapsed > options.case_seconds:
            problem = f"took {elapsed:.1f} s"
        if problem:
            failures.append(f"{hint}: {problem}")
            if len(failures) >= MAX_FAILURES:
                break
    with capsys.disabled():
        print(f"[fuzz] config loader: {options.config_cases} case(s) in {time.monotonic() - started:.1f} s: "
              + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    assert not failures, "\n".join(failures)
