"""Hostile-input generators for the intake, shared by test_robustness.py (thousands of malformed requests through
the test client) and test_fuzz.py (100,000 seeded cases): the senders' header names, never-valid values, good and bad
bodies, signature mutations, and Intake, which signs, sends and checks every answer against the HTTP contract.
Generators are seeded `random.Random`s, so a failure names a case that can be replayed exactly."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import itertools
import json
import random
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from flask.testing import FlaskClient

from tests.support.app import ROOT
from tests.support.clocks import T0, Clock
from webhook import signatures
from webhook.config import Settings
from webhook.events import MAX_ITEMS, FieldMap
from webhook.store import Store

SOURCES = ("zendesk", "helpdesk", "inhouse", "hubspot")
LIMIT = 262144  # [intake] max_body_bytes of the shipped config
STATUSES = ("payment_in_progress", "card_capture", "open", "pending", "hold", "solved", "pci_capture")
SIGNATURE_HEADERS = {
    "standard": ("webhook-id", "webhook-timestamp", "webhook-signature"),
    "zendesk": (signatures.ZENDESK_SIGNATURE, signatures.ZENDESK_TIMESTAMP),
    "hubspot-v3": (signatures.HUBSPOT_SIGNATURE, signatures.HUBSPOT_TIMESTAMP),
    "hmac-sha256": (signatures.DEFAULT_HMAC_HEADER,),
}
TIMESTAMP_HEADER = {
    "standard": "webhook-timestamp",
    "zendesk": signatures.ZENDESK_TIMESTAMP,
    "hubspot-v3": signatures.HUBSPOT_TIMESTAMP,
}
SIGNATURE_HEADER = {scheme: names[-1] if scheme == "standard" else names[0]
                    for scheme, names in SIGNATURE_HEADERS.items()}

# Values that are never a valid signature of anything (latin-1 only: a WSGI server hands header bytes over as latin-1).
GARBAGE = (
    "!!!", "====", "YQ", "a===", "v1,", "v1,!!!", "sha256=", "sha256=zz", "null", "[]", "{}", "\x00", "\x01\x7f",
    "\xe9\xff\xfe", "Ã©tÃ©", "\xa0\xa0", "A" * 20_000, "\xe9" * 20_000, "v1," + "A" * 20_000, "sha256=" + "0" * 20_000,
    "%00", "../../etc/passwd", "' OR 1=1 --", "v1,=", "v1a,abc", "sha1=" + "0" * 40, "0" * 64, "sha256=" + "g" * 64,
)
# Timestamps that are malformed, absurd or outside the tolerance in every scheme's unit (none equals a real one).
BAD_TIMESTAMPS = (
    "1e30", "-5", "nan", "NaN", "inf", "-inf", "99999999999999999999", "999999999999999999999", "0", "+5", "5.0",
    "0x1F", "1_000", "\uff11\uff12\uff13", "1795428000.5", "-1795428000", "\xe9", "",
    "99999-01-01T00:00:00Z", "2026-02-30T10:00:00Z", "0000-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00", "2026-11-23T10:00:00.1234567Z", "2026-11-23 10:00:00Z", "2026-11-23t10:00:00z",
    "2026-11-23T10:00:00+00:00", "2026-11-23T10:00:00", "2026-11-23T10:00:00+24:00", "2026-11-23", "1795427999",
    "1795427999999", "1795427000000", "17954280000000000000", "2026-11-23T09:59:59Z",
)  # T0 is 1795428000 s: the values near it are inside the tolerance but not what was signed
ODD_CONTENT_TYPES = (
    None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
    "application/json; charset=latin-1", "application/octet-stream", "application/xml", "*/*", "\xe9/\xff",
    "application/json; boundary=", "x" * 2000,
)


@dataclass
class Intake:
    """Sign and send requests the way a sender would, and check the answers against the HTTP contract."""

    client: FlaskClient
    settings: Settings
    store: Store
    clock: Clock
    sent: int = 0

    def share(self, count: int) -> int:
        """How many cases to generate: all on SQLite, fewer on PostgreSQL (each write costs more there)."""
        return count if self.store.dialect == "sqlite" else count * 2 // 5

    def sign(self, source: str, body: bytes, *, at: datetime | None = None, secret: str | None = None,
             url: str | None = None, method: str = "POST", scheme: str | None = None) -> dict[str, str]:
        src = self.settings.sources[source]
        # A delivery id from the body, not a random one: the same seed signs the same bytes (reproducible cases).
        message_id = "msg_" + hashlib.sha256(body).hexdigest()[:32]
        return signatures.sign(scheme or src.scheme, body=body, secret=secret or src.secrets[0],
                               now=at or self.clock(), method=method, header=src.header,
                               url=url or f"http://localhost/webhooks/{source}", message_id=message_id)

    def post(self, path: str, body: bytes, headers: dict[str, str], *, content_type: str | None = "application/json",
             chunked: bool = False, method: str = "POST") -> Any:
        self.sent += 1
        # The raw bytes as a stream with their length (data=b"" with a multipart type would make the test client
        # build a multipart body of its own).
        options: dict[str, Any] = {"input_stream": io.BytesIO(body), "content_length": len(body)}
        if chunked:  # what gunicorn passes on for Transfer-Encoding: chunked: no length, a terminated stream
            options = {"input_stream": io.BytesIO(body), "environ_overrides": {"wsgi.input_terminated": True}}
            headers = headers | {"Transfer-Encoding": "chunked"}
        if content_type is not None:
            options["content_type"] = content_type
        response = self.client.open(path, method=method, headers=headers, **options)
        check_contract(response, f"{method} {path[:80]}")
        return response

    def rows(self) -> int:
        return sum(self.store.counts().values())


def check_contract(response: Any, case: str) -> None:
    """The invariants every answer keeps: no 5xx, and a JSON body with "error" for every refusal."""
    assert response.status_code < 500, f"{case}: {response.status_code} {response.data[:300]!r}"
    if response.status_code >= 400:
        assert response.is_json, f"{case}: {response.status_code} is not JSON: {response.data[:200]!r}"
        assert isinstance(response.json, dict) and "error" in response.json, f"{case}: {response.json!r}"


def seeded(*parts: object) -> random.Random:
    """A generator seeded from the test's name, stable across runs and PYTHONHASHSEED."""
    return random.Random(zlib.crc32(":".join(map(str, parts)).encode()))


# ---------------------------------------------------------------- good bodies


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def good_item(source: str, rng: random.Random, n: int, now: datetime) -> dict[str, Any]:
    """One well-formed event in the body shape of `source`'s mapping, with a unique event id."""
    if source == "zendesk":
        item = json.loads((ROOT / "samples" / "zendesk-status-changed.json").read_bytes())
        item["id"] = f"rb-{n}-{rng.getrandbits(64):016x}"
        item["time"] = iso(now).replace("Z", ".123456789Z")
        item["detail"]["id"] = str(rng.randint(1, 10**9))
        item["event"] = {"current": rng.choice(STATUSES).upper(), "previous": rng.choice(STATUSES).upper()}
        return item
    if source == "hubspot":
        owner = {"ownerId": "74512"} if rng.random() < 0.5 else {"ownerEmail": "omar.agent@example.com"}
        return {"eventId": 10**9 + n, "occurredAt": int(now.timestamp() * 1000), "objectId": rng.randint(1, 10**9),
                "subscriptionType": "ticket.propertyChange", "propertyName": "hs_pipeline_stage",
                "propertyValue": rng.choice(STATUSES)} | owner
    agent = rng.choice([{"email": "jane.agent@example.com"},
                        {"genesys_user_id": "50fcd33c-1a2b-4c3d-8e9f-0123456789ab"},
                        {"crm_id": "x", "email": "jane.agent@example.com"}])
    return {"event_id": f"rb-{n}-{rng.getrandbits(32):08x}", "occurred_at": iso(now), "agent": agent,
            "ticket": {"id": str(rng.randint(1, 10**6)), "status": rng.choice(STATUSES),
                       "previous_status": rng.choice(STATUSES)}}


def good_body(source: str, rng: random.Random, ids: Iterator[int], now: datetime) -> tuple[bytes, int]:
    """A well-formed body and how many events it holds (HubSpot sends arrays)."""
    if source == "hubspot" or rng.random() < 0.15:
        items = [good_item(source, rng, next(ids), now) for _ in range(rng.randint(1, 3))]
        return json.dumps(items).encode(), len(items)
    return json.dumps(good_item(source, rng, next(ids), now), indent=rng.choice([None, 2])).encode(), 1


# ---------------------------------------------------------------- bad bodies


RAW = "@@raw@@"  # a placeholder string replaced by a raw token (NaN, 1e400, a 5,000-digit number) after dumping


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value


def drop_path(doc: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


WRONG_TYPES: tuple[Callable[[random.Random], tuple[Any, str | None]], ...] = (
    lambda r: ({}, None), lambda r: ([], None), lambda r: (True, None), lambda r: (False, None),
    lambda r: ({"id": "1"}, None), lambda r: ([1, 2], None), lambda r: (nested(r.randint(2, 400)), None),
    lambda r: ("x" * r.randint(513, 5000), None), lambda r: (10 ** r.randint(513, 1200), None),
    lambda r: (RAW, "1e400"), lambda r: (RAW, "-1e999"), lambda r: (RAW, "NaN"), lambda r: (RAW, "Infinity"),
    lambda r: (RAW, "-Infinity"), lambda r: (RAW, "9" * r.randint(4301, 6000)), lambda r: ("nul\x00inside", None),
    lambda r: ("\ud800 unpaired", None),
)
BAD_TIMES: tuple[Callable[[random.Random], tuple[Any, str | None]], ...] = (
    lambda r: ("not a time", None), lambda r: ("2026-13-45T00:00:00Z", None), lambda r: ("99999-01-01T00:00:00Z", None),
    lambda r: ("2026-11-23T10:00:00+25:00", None), lambda r: (True, None), lambda r: ({}, None),
    lambda r: ([T0.isoformat()], None), lambda r: ("9999999999999999", None), lambda r: (10**30, None),
    lambda r: (1e17, None), lambda r: (-1e12, None), lambda r: (-62135596801, None), lambda r: (RAW, "1e400"),
    lambda r: (RAW, "NaN"), lambda r: ("0000-00-00T00:00:00Z", None), lambda r: ("\xe9t\xe9", None),
)
NOT_JSON = (
    "hello {n}", "<event><id>{n}</id></event>", "ticket_id={n}&status=open", "{{'single': 'quotes', 'n': {n}}}",
    '{{"trailing": {n},}}', '[{n}, 2', "{n} garbage", '// comment\n{{"n": {n}}}', "undefined{n}", "True {n}",
    "NULL {n}", "{{a: {n}}}", '{{"a": "unterminated {n}', "\x00{n}", "[{n}]]", '{{"a" {n}}}',
)
NOT_UTF8 = (b"\xff\xfe", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80", b"\xfe")


@dataclass(frozen=True)
class BadBody:
    """A signed body the intake must store: `invalid` rows expected, and `good` rows among them (mixed arrays)."""

    kind: str
    body: bytes
    invalid: int
    good: int = 0


def whitespace_tag(n: int) -> bytes:
    """A unique run of JSON whitespace, appended so that no two generated bodies are the same bytes."""
    digits = []
    while True:
        n, d = divmod(n, 4)
        digits.append(b" \t\n\r"[d : d + 1])
        if not n:
            return b"\n" + b"".join(digits)


def dumps(doc: Any, raw: str | None) -> bytes:
    text = json.dumps(doc)
    return (text.replace(json.dumps(RAW), raw) if raw is not None else text).encode()


Element = tuple[Any, "str | None", str]  # a document, the raw token its RAW placeholder stands for, what is wrong


@dataclass
class BadBodies:
    """Makes correctly signed bodies that cannot be parsed, in the shape of one source's mapping."""

    source: str
    mapping: FieldMap
    rng: random.Random
    now: datetime
    ids: Iterator[int] = field(default_factory=itertools.count)

    KINDS = ("not_json", "not_utf8", "blank", "scalar", "item", "empty_array", "array_bad", "array_mixed",
             "array_too_long", "deep", "huge_number", "nan_token")

    def make(self, kind: str | None = None) -> BadBody:
        """One body of the given kind (default: any, items twice as often); unique bytes every time."""
        kind = kind or self.rng.choice((*self.KINDS, "item", "item"))
        body = getattr(self, f"_{kind}")()
        if isinstance(body, BadBody):
            return replace(body, body=body.body + whitespace_tag(next(self.ids)))
        return BadBody(kind, body + whitespace_tag(next(self.ids)), 1)

    def good(self) -> dict[str, Any]:
        return good_item(self.source, self.rng, next(self.ids), self.now)

    def _not_json(self) -> bytes:
        return self.rng.choice(NOT_JSON).format(n=next(self.ids)).encode()

    def _not_utf8(self) -> bytes:
        text = json.dumps(self.good()).encode()
        cut = self.rng.randrange(len(text))
        return text[:cut] + self.rng.choice(NOT_UTF8) + text[cut:]

    def _blank(self) -> bytes:
        return b" "

    def _scalar(self) -> bytes:
        return self.rng.choice([b"null", b"true", b"false", b"0", b"-1.5", b'"text"', b"1e400"])

    def _empty_array(self) -> bytes:
        return b"[ ]"

    def _array_too_long(self) -> bytes:
        return json.dumps([{}] * (MAX_ITEMS + self.rng.randint(1, 20))).encode()

    def _deep(self) -> bytes:
        depth = self.rng.choice([2_000, 10_000, 40_000])  # under the body limit either way
        opener, closer = self.rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        return opener * depth + b"1" + closer * depth

    def _huge_number(self) -> bytes:
        return self._token("9" * self.rng.randint(4301, 9000))  # more digits than Python's int limit

    def _nan_token(self) -> bytes:
        return self._token(self.rng.choice(["NaN", "Infinity", "-Infinity"]))

    def _token(self, token: str) -> bytes:
        item = self.good()
        m = self.mapping
        set_path(item, self.rng.choice(m.ticket_id + m.status + m.agent + m.event_id), RAW)
        return dumps(item, token)

    def _item(self) -> BadBody:
        doc, raw, what = self.element()
        return BadBody(f"item: {what}", dumps(doc, raw), 1)

    def _array_bad(self, good: int = 0) -> BadBody:
        bad: list[Any] = []
        wanted = self.rng.randint(1, 4)
        while len(bad) < wanted:  # raw tokens are left out here: a NaN would spoil the whole array
            doc, raw, _ = self.element()
            if raw is None:
                bad.append(doc)
        elements = bad + [self.good() for _ in range(good)]
        self.rng.shuffle(elements)
        return BadBody("array_mixed" if good else "array_bad", json.dumps(elements).encode(), len(bad), good)

    def _array_mixed(self) -> BadBody:
        return self._array_bad(good=self.rng.randint(1, 3))

    def element(self) -> Element:
        """One element that cannot become an event."""
        spoil = self.rng.choice([self._missing, self._blank_field, self._wrong_type, self._unknown_agent,
                                 self._bad_time, self._not_object, lambda item: ({}, None, "empty object")])
        return spoil(self.good())

    def _required(self) -> dict[str, tuple[str, ...]]:
        return {"ticket_id": self.mapping.ticket_id, "status": self.mapping.status, "agent": self.mapping.agent}

    def _missing(self, item: dict[str, Any]) -> Element:
        names = self.rng.sample(sorted(self._required()), self.rng.randint(1, 3))
        for name in names:
            for path in self._required()[name]:
                drop_path(item, path)
        return item, None, f"missing {names}"

    def _blank_field(self, item: dict[str, Any]) -> Element:
        name, paths = self.rng.choice(sorted(self._required().items()))
        for path in paths:
            drop_path(item, path)
        set_path(item, paths[0], self.rng.choice([None, "", "   ", "\t\n"]))
        return item, None, f"blank {name}"

    def _wrong_type(self, item: dict[str, Any]) -> Element:
        m = self.mapping  # the first path of a field is read first: a wrong value there spoils the element
        optional = {"event_id": m.event_id, "previous_status": m.previous_status, "conversation_id": m.conversation_id}
        fields = self._required() | {k: v for k, v in optional.items() if v}
        name = self.rng.choice(sorted(fields))
        value, raw = self.rng.choice(WRONG_TYPES)(self.rng)
        set_path(item, fields[name][0], value)
        return item, raw, f"wrong type {name}"

    def _unknown_agent(self, item: dict[str, Any]) -> Element:
        for path in self.mapping.agent:  # neither a Genesys user id, nor an e-mail, nor in [agents]
            drop_path(item, path)
        unknown = ["agent-7", "not an email", "a@b", "@", 12345, "zendesk:1", "50fcd33c-1a2b-4c3d", "jane @example.com"]
        set_path(item, self.mapping.agent[0], self.rng.choice(unknown))
        return item, None, "unknown agent"

    def _bad_time(self, item: dict[str, Any]) -> Element:
        value, raw = self.rng.choice(BAD_TIMES)(self.rng)
        set_path(item, self.mapping.occurred_at[0], value)
        return item, raw, "bad time"

    def _not_object(self, item: dict[str, Any]) -> Element:
        return self.rng.choice([None, 1, "text", [], True, 0.5]), None, "not an object"  # [] alone: an empty array


# ---------------------------------------------------------------- malformed signatures


Mutation = Callable[[random.Random, "Request"], "Request"]


@dataclass(frozen=True)
class Request:
    source: str
    scheme: str
    body: bytes
    headers: dict[str, str]
    note: str = ""

    def but(self, note: str, **changes: Any) -> Request:
        return replace(self, note=note, **changes)


def other_secret(rng: random.Random, scheme: str) -> str:
    raw = rng.randbytes(32)
    return "whsec_" + base64.b64encode(raw).decode() if scheme == "standard" else base64.b64encode(raw).decode()


def mutations(intake: Intake) -> list[tuple[str, Mutation, frozenset[str]]]:
    """(name, mutation, schemes it applies to): each turns a correctly signed request into one that must fail."""
    every = frozenset(SIGNATURE_HEADERS)
    stamped = frozenset(TIMESTAMP_HEADER)

    def drop(rng: random.Random, req: Request) -> Request:
        names = rng.sample(SIGNATURE_HEADERS[req.scheme], rng.randint(1, len(SIGNATURE_HEADERS[req.scheme])))
        return req.but(f"drop {names}", headers={k: v for k, v in req.headers.items() if k not in names})

    def blank(rng: random.Random, req: Request) -> Request:
        name = rng.choice(SIGNATURE_HEADERS[req.scheme])
        return req.but(f"blank {name}", headers=req.headers | {name: rng.choice(["", " ", "\t"])})

    def garbage(rng: random.Random, req: Request) -> Request:
        name = rng.choice(SIGNATURE_HEADERS[req.scheme])
        value = rng.choice(GARBAGE)
        return req.but(f"garbage {name}={value[:20]!r}", headers=req.headers | {name: value})

    def timestamp(rng: random.Random, req: Request) -> Request:
        value = rng.choice(BAD_TIMESTAMPS)
        name = TIMESTAMP_HEADER[req.scheme]
        return req.but(f"timestamp {value[:30]!r}", headers=req.headers | {name: value})

    def tamper(rng: random.Random, req: Request) -> Request:
        body = bytearray(req.body)
        where = rng.randrange(len(body))
        how = rng.randrange(3)
        if how == 0:
            body[where] ^= 1 << rng.randrange(8)
        elif how == 1:
            body.insert(where, rng.randrange(256))
        else:
            del body[where]
        return req.but(f"tamper {how}@{where}", body=bytes(body))

    def wrong_secret(rng: random.Random, req: Request) -> Request:
        secret = other_secret(rng, req.scheme)
        return req.but("wrong secret", headers=intake.sign(req.source, req.body, secret=secret))

    def out_of_window(rng: random.Random, req: Request) -> Request:
        tolerance = intake.settings.sources[req.source].tolerance_seconds
        offset = rng.choice([-1, 1]) * (tolerance + rng.choice([2, 60, 3600, 86400 * 365, 10**9]))
        at = intake.clock() + timedelta(seconds=offset)
        return req.but(f"signed {offset:+.0f} s away", headers=intake.sign(req.source, req.body, at=at))

    def other_scheme(rng: random.Random, req: Request) -> Request:
        scheme = rng.choice(sorted(set(SIGNATURE_HEADERS) - {req.scheme}))
        secret = intake.settings.sources[req.source].secrets[0]
        if scheme == "standard":
            secret = other_secret(rng, scheme)
        headers = intake.sign(req.source, req.body, scheme=scheme, secret=secret)
        return req.but(f"signed as {scheme}", headers=headers)

    def unsigned(rng: random.Random, req: Request) -> Request:
        return req.but("unsigned", headers={})

    def flood(rng: random.Random, req: Request) -> Request:
        # The good signature after thousands of entries: only the first few entries of the header are looked at.
        good = req.headers["webhook-signature"]
        filler = rng.choice(["v1,AAAA", "v1,!!", "v1a,AAAA", "v2,x", "v1," + "A" * 44])
        count = rng.randint(1_000, 5_000)
        return req.but(f"{count} entries", headers=req.headers | {"webhook-signature": f"{filler} " * count + good})

    def versions(rng: random.Random, req: Request) -> Request:
        good = req.headers["webhook-signature"].removeprefix("v1,")
        value = rng.choice([f"v1a,{good}", f"v2,{good}", f"V1,{good}", f"v1 {good}", f"v1;{good}", f"v1,{good},x",
                            f"v1,{good[:-4]}", f"v1,{good}AAAA", f"{good}", f"v1,{good[::-1]}"])
        return req.but(f"version {value[:8]!r}", headers=req.headers | {"webhook-signature": value})

    def other_id(rng: random.Random, req: Request) -> Request:
        value = rng.choice(["msg_other", "x" * 20_000, "msg_\xe9\xff", "", "msg_" + "\xa0" * 10])
        return req.but(f"webhook-id {value[:10]!r}", headers=req.headers | {"webhook-id": value})

    def body_first(rng: random.Random, req: Request) -> Request:
        # The old Zendesk documentation's order (body then timestamp) is not what Zendesk signs.
        stamp = req.headers[signatures.ZENDESK_TIMESTAMP]
        key = intake.settings.sources[req.source].secrets[0].encode()
        mac = base64.b64encode(hmac.new(key, req.body + stamp.encode(), hashlib.sha256).digest()).decode()
        return req.but("body first", headers=req.headers | {signatures.ZENDESK_SIGNATURE: mac})

    def other_url(rng: random.Random, req: Request) -> Request:
        url, method = rng.choice([
            ("https://localhost/webhooks/hubspot", "POST"), ("http://localhost/webhooks/hubspot?x=1", "POST"),
            ("http://evil.example/webhooks/hubspot", "POST"), ("http://localhost/webhooks/hubspot", "PUT"),
            ("http://localhost:80/webhooks/hubspot", "POST"), ("http://localhost/webhooks/hubspot/", "POST"),
            ("http://localhost/webhooks/zendesk", "POST"), ("http://LOCALHOST/webhooks/hubspot", "POST"),
        ])
        return req.but(f"signed for {method} {url}", headers=intake.sign(req.source, req.body, url=url, method=method))

    def seconds(rng: random.Random, req: Request) -> Request:
        # Seconds where HubSpot sends milliseconds: signed consistently, but 1970 in the scheme's unit.
        ms = req.headers[signatures.HUBSPOT_TIMESTAMP]
        return req.but("seconds, not ms", headers=req.headers | {signatures.HUBSPOT_TIMESTAMP: ms[:-3]})

    def hex_games(rng: random.Random, req: Request) -> Request:
        good = req.headers[signatures.DEFAULT_HMAC_HEADER].removeprefix("sha256=")
        value = rng.choice([good, f"sha256={good[:-1]}", f"sha256={good}0", f"sha1={good}", f"sha256 = {good}",
                            f"sha256:{good}", f"sha256={good[::-1]}", f"sha256=={good}", f"sha512={good}",
                            f"sha256={'0' * 64}", "sha256=" + base64.b64encode(bytes.fromhex(good)).decode()])
        return req.but(f"hex {value[:10]!r}", headers={signatures.DEFAULT_HMAC_HEADER: value})

    def wrong_header(rng: random.Random, req: Request) -> Request:
        value = req.headers[signatures.DEFAULT_HMAC_HEADER]
        name = rng.choice(["X-Hub-Signature", "X-Signature-256", "X-Hub-Signature-512", "Signature"])
        return req.but(f"header {name}", headers={name: value})

    return [
        ("drop", drop, every), ("blank", blank, every), ("garbage", garbage, every), ("timestamp", timestamp, stamped),
        ("tamper", tamper, every), ("wrong_secret", wrong_secret, every), ("window", out_of_window, stamped),
        ("other_scheme", other_scheme, every), ("unsigned", unsigned, every), ("flood", flood, frozenset({"standard"})),
        ("versions", versions, frozenset({"standard"})), ("other_id", other_id, frozenset({"standard"})),
        ("body_first", body_first, frozenset({"zendesk"})), ("other_url", other_url, frozenset({"hubspot-v3"})),
        ("seconds", seconds, frozenset({"hubspot-v3"})), ("hex_games", hex_games, frozenset({"hmac-sha256"})),
        ("wrong_header", wrong_header, frozenset({"hmac-sha256"})),
    ]


FORWARDED = (
    {}, {}, {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com"}, {"X-Forwarded-For": "garbage"},
    {"X-Forwarded-Host": "\xe9\xff", "X-Forwarded-Port": "abc"}, {"X-Forwarded-Proto": "gopher, https, http"},
    {"X-Forwarded-Host": "a." * 100}, {"X-Forwarded-For": "1.2.3.4, " * 500},
)  # a host label over 63 characters is refused by Werkzeug's routing before any view: see test_hostile_hosts
