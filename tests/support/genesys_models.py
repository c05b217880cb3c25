"""Genesys Cloud answers for tests, built from the official SDK's models (PureCloudPlatformClientV2, test data only)."""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import math
import re
import sys
import types
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Final, Literal

from tests.support.clocks import T0

# Every builder sets its fields through the SDK's generated setters and serialises with the SDK's own
# sanitize_for_serialization, so the keys are the SDK's attribute_map names (camelCase, as on the wire) and a value
# outside a field's allowed_values is refused: the SDK itself only swaps such a value for "outdated_sdk_version",
# _build turns that into a ValueError. The SDK writes datetimes with isoformat() ("+00:00", microseconds); they are
# rewritten as Genesys sends them: YYYY-MM-DDTHH:MM:SS.mmmZ.
#
# The SDK's package __init__ imports all of its ~6,650 models and its APIs (about 2 s). Importing one model submodule
# still runs it, so the few model files needed are loaded under a private package name (_genesys_sdk) instead: the
# SDK's own files and code, without the package __init__ (about 40 ms). Their relative imports reach only utils.py
# and api_null_value.py.

Json = dict[str, Any]

SDK: Final = "PureCloudPlatformClientV2"
SDK_VERSION: Final = "269.0.0"
_ALIAS: Final = "_genesys_sdk"
_OUTDATED: Final = "outdated_sdk_version"  # what the SDK's setters store for a value outside allowed_values
NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://crm-mute-bridge.invalid/tests/genesys_models")
CALLS_URI: Final = "/api/v2/conversations/calls"
CUSTOMER_NUMBER: Final = "+13175550100"  # 555-01xx: reserved for fiction in the North American numbering plan

_ISO_FROM_SDK = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?[+-]\d{2}:\d{2}")
_PRIMITIVES: Final = frozenset({"str", "bool", "int", "float", "object"})
_ENDED_STATES: Final = frozenset({"disconnected", "terminated"})


class _Auto(Enum):
    """Marks a time the builder derives from the leg's other times and its state."""

    AUTO = "auto"


AUTO: Final = _Auto.AUTO
When = datetime | None | Literal[_Auto.AUTO]


def uid(name: str) -> str:
    """Return the deterministic UUID (uuid5) that tests use for `name`."""
    return str(uuid.uuid5(NAMESPACE, name))


# --- the SDK, loaded lightly --------------------------------------------------------------------------------------


@functools.cache
def _sdk_root() -> Path:
    """Return the installed SDK's package directory without importing the package."""
    spec = importlib.util.find_spec(SDK)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"tests/genesys_models.py needs {SDK}: .venv/bin/pip install {SDK}=={SDK_VERSION}", name=SDK
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _sdk_module(relative: str) -> types.ModuleType:
    """Import one of the SDK's modules (e.g. "models.call_conversation") under the private package name."""
    root = _sdk_root()
    for package, path in ((_ALIAS, root), (f"{_ALIAS}.models", root / "models")):
        if package not in sys.modules:
            stub = types.ModuleType(package)
            stub.__path__ = [str(path)]
            sys.modules[package] = stub
    return importlib.import_module(f"{_ALIAS}.{relative}")


@functools.cache
def model_class(name: str) -> type:
    """Return the SDK's model class called `name` (e.g. "CallMediaParticipant")."""
    module = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    cls: type = getattr(_sdk_module(f"models.{module}"), name)
    return cls


@functools.cache
def allowed_values(model: str, attribute: str) -> tuple[str, ...] | None:
    """Return the `allowed_values` the SDK's setter of `model.attribute` checks, or None when it checks none."""
    setter = getattr(model_class(model), attribute).fset
    match = re.search(r"allowed_values = (\[.*?\])", inspect.getsource(setter))
    return tuple(ast.literal_eval(match.group(1))) if match else None


def _build(model: str, **attributes: Any) -> Any:
    """Create an SDK model and set each attribute through its setter, refusing values outside `allowed_values`."""
    instance = model_class(model)()
    for attribute, value in attributes.items():
        if attribute not in instance.swagger_types:
            raise TypeError(f"{model} has no attribute {attribute!r}")
        if value is None:
            continue
        allowed = allowed_values(model, attribute)
        if allowed is not None and value not in allowed:
            raise ValueError(f"{model}.{attribute}={value!r} is not one of the SDK's allowed values {list(allowed)}")
        setattr(instance, attribute, value)
        if allowed is not None and getattr(instance, attribute) == _OUTDATED:
            raise ValueError(f"the SDK refused {model}.{attribute}={value!r}")
    return instance


def _from_wire(model: str, data: Json) -> Any:
    """Rebuild an SDK model from its wire JSON, through the same setters (unknown keys are refused)."""
    instance = model_class(model)()
    by_json_key = {json_key: attribute for attribute, json_key in instance.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json_key))
    if unknown:
        raise ValueError(f"{model} has no field(s) {unknown}")
    return _build(
        model,
        **{
            by_json_key[key]: _value_from_wire(instance.swagger_types[by_json_key[key]], value)
            for key, value in data.items()
        },
    )


def _value_from_wire(swagger_type: str, value: Any) -> Any:
    """Turn one wire value back into what the SDK model holds for `swagger_type`."""
    if value is None or swagger_type in _PRIMITIVES or swagger_type.startswith("dict("):
        return value
    if swagger_type == "datetime":
        return datetime.fromisoformat(value)
    if swagger_type.startswith("list[") and swagger_type.endswith("]"):
        return [_value_from_wire(swagger_type[5:-1], item) for item in value]
    return _from_wire(swagger_type, value)


def genesys_time(moment: datetime) -> str:
    """Format an aware datetime as Genesys does: UTC, milliseconds and a Z."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: Genesys times are UTC")
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _genesys_times(value: Any) -> Any:
    """Rewrite the SDK's isoformat() datetimes (`+00:00`, no millis) in serialised JSON as Genesys writes them."""
    if isinstance(value, dict):
        return {key: _genesys_times(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_genesys_times(item) for item in value]
    if isinstance(value, str) and _ISO_FROM_SDK.fullmatch(value):
        return genesys_time(datetime.fromisoformat(value))
    return value


def to_wire(model: Any) -> Json:
    """Serialise an SDK model with the SDK's own serializer: camelCase keys, None fields left out."""
    serialize = _sdk_module("utils").sanitize_for_serialization
    wire: Json = _genesys_times(serialize(model))
    return wire


# --- builders ------------------------------------------------------------------------------------------------------


def _aware(moment: datetime | None) -> datetime | None:
    """Return `moment`, refusing a naive datetime."""
    if moment is not None and moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: Genesys times are UTC")
    return moment


def user_ref(user_id: str) -> Any:
    """Return the SDK's reference to a user (DomainEntityRef, the type of CallMediaParticipant.user)."""
    return _build("DomainEntityRef", id=user_id, self_uri=f"/api/v2/users/{user_id}")


def participant(
    *,
    user_id: str | None = None,
    purpose: str = "agent",
    state: str = "connected",
    held: bool = False,
    muted: bool = False,
    start: datetime = T0,
    connected: When = AUTO,
    end: When = AUTO,
    held_since: When = AUTO,
    monitored: str | None = None,
    coached: str | None = None,
    consult: str | None = None,
    transfer_source: str | None = None,
    disconnect_type: str | None = None,
    direction: str = "inbound",
    address: str | None = None,
    name: str | None = None,
    id: str | None = None,
) -> Json:
    """Return a call leg (CallMediaParticipant) as Genesys sends it; a leg without a user is the customer's."""
    _aware(start)
    if connected is AUTO:
        connected = start + timedelta(seconds=2) if state in _ENDED_STATES | {"connected"} else None
    if end is AUTO:
        end = (connected or start) + timedelta(seconds=60) if state in _ENDED_STATES else None
    if held_since is AUTO:
        held_since = (connected or start) + timedelta(seconds=30) if held else None
    if user_id is None and address is None and purpose == "customer":
        address, name = f"tel:{CUSTOMER_NUMBER}", name or CUSTOMER_NUMBER
    if id is None:
        id = uid(f"participant/{purpose}/{user_id or address}/{state}/{start.isoformat()}/{monitored}/{coached}")
    model = _build(
        "CallMediaParticipant",
        id=id,
        name=name,
        address=address,
        start_time=start,
        connected_time=_aware(connected),
        end_time=_aware(end),
        start_hold_time=_aware(held_since),
        purpose=purpose,
        state=state,
        direction=direction,
        disconnect_type=disconnect_type,
        held=held,
        user=user_ref(user_id) if user_id is not None else None,
        muted=muted,
        confined=False,
        recording=False,
        recording_state="none",
        monitored_participant_id=monitored,
        coached_participant_id=coached,
        consult_participant_id=consult,
        transfer_source=transfer_source,
    )
    return to_wire(model)


def call(*participants: Json, id: str | None = None, recording_state: str = "none") -> Json:
    """Return a voice conversation (CallConversation) holding `participants`, as GET /conversations/calls/{id} does."""
    ids = [leg["id"] for leg in participants]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate participant ids in one call: {ids}")
    if id is None:
        id = uid("call/" + ",".join(ids))
    model = _build(
        "CallConversation",
        id=id,
        participants=[_from_wire("CallMediaParticipant", leg) for leg in participants],
        other_media_uris=[],
        recording_state=recording_state,
        self_uri=f"{CALLS_URI}/{id}",
    )
    return to_wire(model)


def listing(*calls: Json, page_size: int = 25, page_number: int = 1) -> Json:
    """Return one page of the user's calls (CallConversationEntityListing), as GET /api/v2/conversations/calls does."""
    if len(calls) > page_size:
        raise ValueError(f"{len(calls)} calls do not fit one page of {page_size}")
    page_count = math.ceil(len(calls) / page_size)
    page = f"{CALLS_URI}?pageSize={page_size}&pageNumber="
    model = _build(
        "CallConversationEntityListing",
        entities=[_from_wire("CallConversation", conversation) for conversation in calls],
        page_size=page_size,
        page_number=page_number,
        total=len(calls),
        page_count=page_count,
        self_uri=f"{page}{page_number}",
        first_uri=f"{page}1",
        last_uri=f"{page}{max(page_count, 1)}",
    )
    return to_wire(model)


def user_me(*, id: str, name: str, email: str, state: str = "active") -> Json:
    """Return the logged-in user (UserMe), as GET /api/v2/users/me does."""
    return to_wire(_build("UserMe", id=id, name=name, email=email, state=state, self_uri=f"/api/v2/users/{id}"))


# --- people and scenarios ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """A Genesys user of the scenarios, with a deterministic id."""

    name: str
    email: str

    @property
    def id(self) -> str:
        """Return the user's id (uuid5 of the e-mail)."""
        return uid(f"user/{self.email}")

    def me(self) -> Json:
        """Return what GET /api/v2/users/me answers with this user's token."""
        return user_me(id=self.id, name=self.name, email=self.email)


JANE = Person("Jane Agent", "jane.agent@example.com")
BOB = Person("Bob Colleague", "bob.colleague@example.com")
ALICE = Person("Alice Firstline", "alice.firstline@example.com")
SAM = Person("Sam Supervisor", "sam.supervisor@example.com")


@dataclass(frozen=True)
class Scenario:
    """One agent's calls as Genesys lists them, the leg the service must mute in them, and the legs it must not."""

    name: str
    agent: Person
    calls: tuple[Json, ...]  # CallConversation JSON, in the order GET /api/v2/conversations/calls lists them
    expected_participant_id: str | None  # the leg to mute, or None when nothing may be muted
    expected_conversation_id: str | None
    must_not_mute: frozenset[str]  # every other participant id in `calls`

    @property
    def agent_user_id(self) -> str:
        """Return the agent's Genesys user id."""
        return self.agent.id

    @property
    def me(self) -> Json:
        """Return the agent's GET /api/v2/users/me answer."""
        return self.agent.me()

    @property
    def listing(self) -> Json:
        """Return the agent's GET /api/v2/conversations/calls answer."""
        return listing(*self.calls)

    def call(self, conversation_id: str) -> Json:
        """Return the GET /api/v2/conversations/calls/{conversation_id} answer."""
        return next(conversation for conversation in self.calls if conversation["id"] == conversation_id)

    def participant(self, participant_id: str) -> Json:
        """Return the leg with `participant_id`."""
        return next(
            leg for conversation in self.calls for leg in conversation["participants"] if leg["id"] == participant_id
        )

    def agent_legs(self) -> list[Json]:
        """Return every leg of the agent, in every call."""
        return [
            leg
            for conversation in self.calls
            for leg in conversation["participants"]
            if leg.get("user", {}).get("id") == self.agent.id
        ]


def _scenario(name: str, agent: Person, calls: tuple[Json, ...], expected: str | None) -> Scenario:
    """Assemble a Scenario, finding the expected leg's conversation and listing every other leg as not to mute."""
    legs = {leg["id"]: conversation["id"] for conversation in calls for leg in conversation["participants"]}
    if expected is not None and expected not in legs:
        raise ValueError(f"{name}: expected participant {expected} is in none of the calls")
    return Scenario(
        name=name,
        agent=agent,
        calls=calls,
        expected_participant_id=expected,
        expected_conversation_id=legs[expected] if expected is not None else None,
        must_not_mute=frozenset(legs) - {expected},
    )


def _at(seconds: float) -> datetime:
    """Return T0 plus `seconds`."""
    return T0 + timedelta(seconds=seconds)


def _customer(scenario: str, start: float, **kwargs: Any) -> Json:
    """Return the caller's leg, which has an address and no user."""
    return participant(
        purpose="customer", start=_at(start), connected=_at(start + 0.2), id=uid(f"{scenario}/customer"), **kwargs
    )


def _acd(scenario: str, start: float) -> Json:
    """Return the queue's leg, disconnected once the call was routed to an agent."""
    return participant(
        purpose="acd",
        state="disconnected",
        disconnect_type="transfer",
        start=_at(start),
        connected=_at(start + 0.2),
        end=_at(start + 15),
        id=uid(f"{scenario}/acd"),
    )


def plain_call() -> Scenario:
    """Return an ACD call: customer, the queue's disconnected leg, and the agent connected."""
    agent_leg = uid("plain_call/jane")
    conversation = call(
        _customer("plain_call", 0),
        _acd("plain_call", 5),
        participant(user_id=JANE.id, start=_at(20), connected=_at(23), id=agent_leg),
        id=uid("plain_call/call"),
    )
    return _scenario("plain_call", JANE, (conversation,), agent_leg)


def consult_transfer() -> Scenario:
    """Return a call Alice consult-transferred to Jane, who is now consulting Bob: mute Jane's one connected leg."""
    # The SDK documents consultParticipantId as "the ID of the consult transfer target participant" but not which leg
    # carries it: here the customer, the object of the transfer, points at the current target (Bob). It models
    # transferSource as a free string without documented values, so that is left out rather than invented.
    jane_leg, bob_leg = uid("consult_transfer/jane"), uid("consult_transfer/bob")
    conversation = call(
        _customer("consult_transfer", 0, held=True, held_since=_at(300), consult=bob_leg),
        _acd("consult_transfer", 5),
        participant(
            user_id=ALICE.id,
            state="disconnected",
            disconnect_type="transfer.consult",
            start=_at(20),
            connected=_at(22),
            end=_at(180),
            id=uid("consult_transfer/alice"),
        ),
        participant(user_id=JANE.id, start=_at(150), connected=_at(155), id=jane_leg),
        participant(user_id=BOB.id, start=_at(300), connected=_at(305), id=bob_leg),
        id=uid("consult_transfer/call"),
    )
    return _scenario("consult_transfer", JANE, (conversation,), jane_leg)


def two_legs_same_call() -> Scenario:
    """Return one call Jane transferred to Bob and got back: her older leg is disconnected, her newer one connected."""
    new_leg = uid("two_legs_same_call/jane-new")
    conversation = call(
        _customer("two_legs_same_call", 0),
        _acd("two_legs_same_call", 5),
        participant(
            user_id=JANE.id,
            state="disconnected",
            disconnect_type="transfer",
            start=_at(20),
            connected=_at(22),
            end=_at(120),
            id=uid("two_legs_same_call/jane-old"),
        ),
        participant(
            user_id=BOB.id,
            state="disconnected",
            disconnect_type="transfer",
            start=_at(110),
            connected=_at(112),
            end=_at(240),
            id=uid("two_legs_same_call/bob"),
        ),
        participant(user_id=JANE.id, start=_at(230), connected=_at(233), id=new_leg),
        id=uid("two_legs_same_call/call"),
    )
    return _scenario("two_legs_same_call", JANE, (conversation,), new_leg)


def held_and_active() -> Scenario:
    """Return two calls: Jane put the newer call A on hold and went back to the older call B, whose leg is expected."""
    leg_b = uid("held_and_active/b/jane")
    call_a = call(
        _customer("held_and_active/a", 300),
        _acd("held_and_active/a", 305),
        participant(
            user_id=JANE.id,
            held=True,
            start=_at(320),
            connected=_at(322),
            held_since=_at(400),
            id=uid("held_and_active/a/jane"),
        ),
        id=uid("held_and_active/a"),
    )
    call_b = call(
        _customer("held_and_active/b", 0),
        _acd("held_and_active/b", 5),
        participant(user_id=JANE.id, start=_at(20), connected=_at(22), id=leg_b),
        id=uid("held_and_active/b"),
    )
    return _scenario("held_and_active", JANE, (call_a, call_b), leg_b)


def _supervisor(kind: Literal["monitor", "coach"]) -> Scenario:
    """Return Sam on an own call and listening in on Bob's newer call; only the own call's leg may be muted."""
    # The SDK does not say which purpose a monitoring or coaching leg has; "user" is used: the rule must not lean on it.
    name = "supervisor_monitoring" if kind == "monitor" else "supervisor_coaching"
    own_leg, bob_leg = uid(f"{name}/own/sam"), uid(f"{name}/watched/bob")
    own = call(
        _customer(f"{name}/own", 0),
        _acd(f"{name}/own", 5),
        participant(user_id=SAM.id, start=_at(20), connected=_at(22), id=own_leg),
        id=uid(f"{name}/own"),
    )
    watched = call(
        _customer(f"{name}/watched", 100),
        _acd(f"{name}/watched", 105),
        participant(user_id=BOB.id, start=_at(120), connected=_at(122), id=bob_leg),
        participant(
            user_id=SAM.id,
            purpose="user",
            start=_at(200),
            connected=_at(201),
            monitored=bob_leg if kind == "monitor" else None,
            coached=bob_leg if kind == "coach" else None,
            id=uid(f"{name}/watched/sam"),
        ),
        id=uid(f"{name}/watched"),
    )
    return _scenario(name, SAM, (watched, own), own_leg)


def supervisor_monitoring() -> Scenario:
    """Return a supervisor's own call and a call they monitor (`monitoredParticipantId`): mute the own call's leg."""
    return _supervisor("monitor")


def supervisor_coaching() -> Scenario:
    """Return a supervisor's own call and a call they coach in (`coachedParticipantId`): mute the own call's leg."""
    return _supervisor("coach")


def customer_without_user() -> Scenario:
    """Return a call where only the customer (no user) is connected and the agent's leg has ended: mute nothing."""
    conversation = call(
        _customer("customer_without_user", 0),
        _acd("customer_without_user", 5),
        participant(
            user_id=JANE.id,
            state="disconnected",
            start=_at(20),
            connected=_at(22),
            end=_at(90),
            id=uid("customer_without_user/jane"),
        ),
        id=uid("customer_without_user/call"),
    )
    return _scenario("customer_without_user", JANE, (conversation,), None)


def two_active_legs() -> Scenario:
    """Return two calls where Jane's legs both qualify: the later `connectedTime` wins over the later `startTime`."""
    leg_y = uid("two_active_legs/y/jane")
    call_x = call(
        _customer("two_active_legs/x", 140),
        participant(user_id=JANE.id, start=_at(160), connected=_at(165), id=uid("two_active_legs/x/jane")),
        id=uid("two_active_legs/x"),
    )
    call_y = call(
        _customer("two_active_legs/y", 130),
        participant(user_id=JANE.id, start=_at(150), connected=_at(200), id=leg_y),
        id=uid("two_active_legs/y"),
    )
    return _scenario("two_active_legs", JANE, (call_x, call_y), leg_y)


SCENARIOS: Final = (
    plain_call,
    consult_transfer,
    two_legs_same_call,
    held_and_active,
    supervisor_monitoring,
    supervisor_coaching,
    customer_without_user,
    two_active_legs,
)
