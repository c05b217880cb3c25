"""The Genesys answers built from the SDK's models look like what Genesys sends; the scenarios hold what they say."""

from __future__ import annotations

import importlib.metadata
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.support import genesys_models as gm
from tests.support.clocks import T0
from tests.support.genesys_models import JANE, Json, Scenario

LEG = "11111111-2222-3333-4444-555555555555"
USER = "50fcd33c-0000-4000-8000-000000000001"


def _user_id(leg: Json) -> str | None:
    """Return the leg's user id, or None for a leg without a user."""
    user: dict[str, str] = leg.get("user", {})
    return user.get("id")


def _qualifies(leg: Json, user_id: str) -> bool:
    """Tell whether the leg is the user's own, connected, not held, and neither monitoring nor coaching."""
    return (
        _user_id(leg) == user_id
        and leg["state"] == "connected"
        and not leg["held"]
        and "monitoredParticipantId" not in leg
        and "coachedParticipantId" not in leg
    )


def _legs(calls: tuple[Json, ...]) -> list[Json]:
    """Return every leg of every call."""
    return [leg for conversation in calls for leg in conversation["participants"]]


def _newest(legs: list[Json], key: Callable[[Json], str]) -> str | None:
    """Return the id of the leg with the greatest key, or None when there is none."""
    return max(legs, key=key)["id"] if legs else None


def pick(calls: tuple[Json, ...], user_id: str) -> str | None:
    """Apply the project's rule: the user's qualifying leg connected most recently (connectedTime, else startTime)."""
    legs = [leg for leg in _legs(calls) if _qualifies(leg, user_id)]
    return _newest(legs, lambda leg: leg.get("connectedTime") or leg["startTime"])


# --- builders -----------------------------------------------------------------------------------------------------


def test_agent_leg_has_the_wire_names_and_formats() -> None:
    """An agent's leg carries camelCase keys, a user reference and Genesys' millisecond UTC times."""
    leg = gm.participant(user_id=USER, start=T0, connected=T0 + timedelta(seconds=2.5), monitored=LEG, id=LEG)
    assert leg == {
        "id": LEG,
        "startTime": "2026-11-23T10:00:00.000Z",
        "connectedTime": "2026-11-23T10:00:02.500Z",
        "purpose": "agent",
        "state": "connected",
        "direction": "inbound",
        "held": False,
        "user": {"id": USER, "selfUri": f"/api/v2/users/{USER}"},
        "muted": False,
        "confined": False,
        "recording": False,
        "recordingState": "none",
        "monitoredParticipantId": LEG,
    }


def test_customer_leg_has_an_address_and_no_user() -> None:
    """A customer's leg has a tel: address and its number as name, and no user key at all."""
    leg = gm.participant(purpose="customer", id=LEG)
    assert "user" not in leg
    assert (leg["address"], leg["name"], leg["purpose"]) == ("tel:+13175550100", "+13175550100", "customer")


def test_ended_and_held_legs_get_derived_times() -> None:
    """AUTO times follow the state: an ended leg gets endTime, a held one startHoldTime, an alerting one neither."""
    ended = gm.participant(user_id=USER, state="disconnected", disconnect_type="transfer.consult", id=LEG)
    held = gm.participant(user_id=USER, held=True, id=LEG)
    alerting = gm.participant(user_id=USER, state="alerting", id=LEG)
    assert (ended["connectedTime"], ended["endTime"], ended["disconnectType"]) == (
        "2026-11-23T10:00:02.000Z",
        "2026-11-23T10:01:02.000Z",
        "transfer.consult",
    )
    assert (held["held"], held["startHoldTime"]) == (True, "2026-11-23T10:00:32.000Z")
    assert {"connectedTime", "endTime", "startHoldTime"} & set(alerting) == set()


def test_consult_and_coach_fields_use_the_sdk_names() -> None:
    """consultParticipantId, coachedParticipantId and transferSource come out under the SDK's attribute_map names."""
    leg = gm.participant(user_id=USER, consult="c", coached="d", transfer_source="s", id=LEG)
    assert (leg["consultParticipantId"], leg["coachedParticipantId"], leg["transferSource"]) == ("c", "d", "s")


def test_sdk_datetimes_are_rewritten_to_genesys_format() -> None:
    """Offsets are converted to UTC and microseconds cut to milliseconds; naive times are refused."""
    moment = datetime(2026, 11, 23, 12, 0, 1, 987654, tzinfo=timezone(timedelta(hours=2)))
    assert gm.genesys_time(moment) == "2026-11-23T10:00:01.987Z"
    assert gm.participant(start=moment, connected=None, id=LEG)["startTime"] == "2026-11-23T10:00:01.987Z"
    with pytest.raises(ValueError, match="naive datetime"):
        gm.participant(start=datetime(2026, 11, 23, 10, 0), id=LEG)
    with pytest.raises(ValueError, match="naive datetime"):
        gm.participant(connected=datetime(2026, 11, 23, 10, 0), id=LEG)


def test_the_sdk_alone_only_flags_an_invalid_state() -> None:
    """The SDK's setter stores "outdated_sdk_version" instead of raising, which is why the builders check."""
    leg = gm.model_class("CallMediaParticipant")()
    leg.state = "on-fire"
    assert leg.state == "outdated_sdk_version"


@pytest.mark.parametrize("state", ["on-fire", "Connected", "CONNECTED", ""])
def test_a_state_outside_allowed_values_raises(state: str) -> None:
    """A state the SDK does not list (case included) is refused."""
    with pytest.raises(ValueError, match=r"CallMediaParticipant\.state=.* allowed values \['alerting', 'dialing'"):
        gm.participant(state=state, id=LEG)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: gm.participant(state="disconnected", disconnect_type="hangup", id=LEG), "disconnect_type='hangup'"),
        (lambda: gm.participant(direction="sideways", id=LEG), "direction='sideways'"),
        (lambda: gm.call(recording_state="recording"), "recording_state='recording'"),
        (lambda: gm.user_me(id=USER, name="n", email="e@example.com", state="away"), "UserMe.state='away'"),
    ],
)
def test_other_enumerated_fields_are_checked(build: Callable[[], Json], message: str) -> None:
    """disconnectType, direction, recordingState and the user's state are checked against the SDK's lists."""
    with pytest.raises(ValueError, match=message):
        build()


def test_allowed_values_are_read_from_the_sdk() -> None:
    """allowed_values returns the SDK setter's own list, and None for a free-form field such as purpose."""
    assert gm.allowed_values("CallMediaParticipant", "state") == (
        "alerting", "dialing", "contacting", "offering", "connected", "disconnected", "terminated", "converting",
        "uploading", "transmitting", "parked", "none",
    )  # fmt: skip
    assert gm.allowed_values("CallConversation", "recording_state") == ("none", "active", "paused")
    assert gm.allowed_values("CallMediaParticipant", "purpose") is None
    assert gm.allowed_values("CallMediaParticipant", "transfer_source") is None


def test_call_wraps_its_legs_in_a_call_conversation() -> None:
    """call() returns a CallConversation with the legs unchanged, a selfUri and a recordingState."""
    legs = (gm.participant(purpose="customer", id="p1"), gm.participant(user_id=USER, id="p2"))
    conversation = gm.call(*legs, id="c1", recording_state="active")
    assert conversation == {
        "id": "c1",
        "participants": list(legs),
        "otherMediaUris": [],
        "recordingState": "active",
        "selfUri": "/api/v2/conversations/calls/c1",
    }
    assert gm.call(*legs)["id"] == gm.uid("call/p1,p2")


def test_call_refuses_hand_written_legs_the_sdk_would_not_model() -> None:
    """A leg dict with an unknown key, a bad state or a duplicate id is refused, so none can slip past the SDK."""
    with pytest.raises(ValueError, match=r"no field\(s\) \['userId'\]"):
        gm.call({"id": "p1", "state": "connected", "userId": USER})
    with pytest.raises(ValueError, match="state='live'"):
        gm.call({"id": "p1", "state": "live"})
    with pytest.raises(ValueError, match="duplicate participant ids"):
        gm.call(gm.participant(id="p1"), gm.participant(id="p1"))


def test_build_refuses_an_attribute_the_model_lacks() -> None:
    """Setting a field the SDK model does not have raises instead of being silently dropped."""
    with pytest.raises(TypeError, match="CallMediaParticipant has no attribute 'user_id'"):
        gm._build("CallMediaParticipant", user_id=USER)


def test_listing_has_entities_and_paging() -> None:
    """listing() returns the calls as entities with Genesys' paging fields and URIs."""
    first, second = gm.call(gm.participant(id="a"), id="c1"), gm.call(gm.participant(id="b"), id="c2")
    page = "/api/v2/conversations/calls?pageSize=25&pageNumber=1"
    assert gm.listing(first, second) == {
        "entities": [first, second],
        "pageSize": 25,
        "pageNumber": 1,
        "total": 2,
        "lastUri": page,
        "firstUri": page,
        "selfUri": page,
        "pageCount": 1,
    }
    assert (gm.listing()["entities"], gm.listing()["total"], gm.listing()["pageCount"]) == ([], 0, 0)
    with pytest.raises(ValueError, match="2 calls do not fit one page of 1"):
        gm.listing(first, second, page_size=1)


def test_user_me_is_what_users_me_answers() -> None:
    """user_me() returns the UserMe fields the service reads, with the user's selfUri."""
    assert gm.user_me(id=USER, name="Jane Agent", email="jane.agent@example.com") == {
        "id": USER,
        "name": "Jane Agent",
        "email": "jane.agent@example.com",
        "state": "active",
        "selfUri": f"/api/v2/users/{USER}",
    }
    assert JANE.me()["id"] == JANE.id == gm.uid("user/jane.agent@example.com")


def test_ids_are_deterministic_uuid5() -> None:
    """uid() is uuid5 in the module's namespace, so a test can name an id before the scenario is built."""
    assert gm.uid("plain_call/jane") == str(uuid.uuid5(gm.NAMESPACE, "plain_call/jane"))
    assert gm.plain_call().expected_participant_id == gm.uid("plain_call/jane")
    assert gm.plain_call() == gm.plain_call()
    assert gm.participant(user_id=USER)["id"] == gm.participant(user_id=USER)["id"]
    assert gm.participant(user_id=USER)["id"] != gm.participant(user_id=USER, state="alerting")["id"]


def test_models_come_from_the_sdk_files_without_its_package_init() -> None:
    """The model classes are the SDK's own, loaded under the private package name, and the SDK is the pinned one."""
    cls = gm.model_class("CallMediaParticipant")
    assert cls.__module__ == "_genesys_sdk.models.call_media_participant"
    assert cls().attribute_map["monitored_participant_id"] == "monitoredParticipantId"
    assert importlib.metadata.version(gm.SDK) == gm.SDK_VERSION


def test_the_full_sdk_reads_every_scenario_back_unchanged() -> None:
    """The SDK's own ApiClient deserialises each listing and user, and serialises them back to the same JSON (~2 s)."""
    import PureCloudPlatformClientV2

    client = PureCloudPlatformClientV2.ApiClient()

    class Answer:
        """The part of an HTTP response ApiClient.deserialize reads."""

        def __init__(self, body: Json) -> None:
            self.data = json.dumps(body)

        def getheader(self, name: str) -> str:
            """Return the content type."""
            return "application/json"

    for make in gm.SCENARIOS:
        scenario = make()
        calls = client.deserialize(Answer(scenario.listing), "CallConversationEntityListing")
        me = client.deserialize(Answer(scenario.me), "UserMe")
        assert type(calls.entities[0].participants[0].start_time) is datetime
        assert gm._genesys_times(client.sanitize_for_serialization(calls)) == scenario.listing
        assert client.sanitize_for_serialization(me) == scenario.me


# --- scenarios ----------------------------------------------------------------------------------------------------

SCENARIOS = {make.__name__: make for make in gm.SCENARIOS}


@pytest.fixture(params=list(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> Scenario:
    """Each named scenario."""
    make: Callable[[], Scenario] = SCENARIOS[request.param]
    return make()


def test_expected_leg_belongs_to_the_agent_and_qualifies(scenario: Scenario) -> None:
    """The leg to mute is in the expected call, is the agent's, connected, not held, neither monitoring nor coaching."""
    if scenario.expected_participant_id is None:
        assert scenario.expected_conversation_id is None
        assert not any(_qualifies(leg, scenario.agent_user_id) for leg in _legs(scenario.calls))
        return
    leg = scenario.participant(scenario.expected_participant_id)
    assert leg in scenario.call(scenario.expected_conversation_id or "")["participants"]
    assert _user_id(leg) == scenario.agent_user_id
    assert (leg["state"], leg["held"]) == ("connected", False)
    assert {"monitoredParticipantId", "coachedParticipantId"} & set(leg) == set()


def test_must_not_mute_is_every_other_leg(scenario: Scenario) -> None:
    """must_not_mute lists every participant id of the scenario's calls except the expected one."""
    ids = [leg["id"] for leg in _legs(scenario.calls)]
    assert len(ids) == len(set(ids))
    assert scenario.must_not_mute == set(ids) - {scenario.expected_participant_id}
    assert scenario.expected_participant_id not in scenario.must_not_mute


def test_the_rule_picks_the_expected_leg(scenario: Scenario) -> None:
    """The project's selection rule, applied to the scenario's listing, picks exactly the expected leg."""
    assert pick(tuple(scenario.listing["entities"]), scenario.agent_user_id) == scenario.expected_participant_id


def test_scenario_me_and_listing_are_the_agents(scenario: Scenario) -> None:
    """The scenario's users/me answer is the agent, and its listing holds its calls in order."""
    assert (scenario.me["id"], scenario.me["email"]) == (scenario.agent.id, scenario.agent.email)
    assert scenario.listing["entities"] == list(scenario.calls)
    assert scenario.listing["total"] == len(scenario.calls)


def _connected_newest(calls: tuple[Json, ...], user_id: str) -> str | None:
    """A naive rule: the user's newest connected leg, ignoring hold, monitoring and coaching."""
    legs = [leg for leg in _legs(calls) if _user_id(leg) == user_id and leg["state"] == "connected"]
    return _newest(legs, lambda leg: leg["connectedTime"])


def _start_newest(calls: tuple[Json, ...], user_id: str) -> str | None:
    """A naive rule: the user's qualifying leg with the newest startTime."""
    return _newest([leg for leg in _legs(calls) if _qualifies(leg, user_id)], lambda leg: leg["startTime"])


def _first_own_leg(calls: tuple[Json, ...], user_id: str) -> str | None:
    """A naive rule: the first leg of the user in the listing, whatever its state."""
    return next((leg["id"] for leg in _legs(calls) if _user_id(leg) == user_id), None)


def _newest_agent_leg(calls: tuple[Json, ...], user_id: str) -> str | None:
    """A naive rule: the newest connected, not held agent leg, whoever's it is."""
    legs = [
        leg for leg in _legs(calls) if leg["purpose"] == "agent" and leg["state"] == "connected" and not leg["held"]
    ]
    return _newest(legs, lambda leg: leg["connectedTime"])


def _first_connected(calls: tuple[Json, ...], user_id: str) -> str | None:
    """A naive rule: the first connected leg of the first call, whoever's it is."""
    return next((leg["id"] for leg in calls[0]["participants"] if leg["state"] == "connected"), None)


@pytest.mark.parametrize(
    ("make", "naive"),
    [
        (gm.plain_call, _first_connected),
        (gm.consult_transfer, _newest_agent_leg),
        (gm.two_legs_same_call, _first_own_leg),
        (gm.held_and_active, _connected_newest),
        (gm.supervisor_monitoring, _connected_newest),
        (gm.supervisor_coaching, _connected_newest),
        (gm.customer_without_user, _first_connected),
        (gm.two_active_legs, _start_newest),
    ],
)
def test_each_scenario_defeats_a_naive_rule(
    make: Callable[[], Scenario], naive: Callable[[tuple[Json, ...], str], str | None]
) -> None:
    """Each scenario makes a plausible shortcut pick a leg that must not be muted."""
    scenario = make()
    wrong = naive(scenario.calls, scenario.agent_user_id)
    assert wrong is not None
    assert wrong in scenario.must_not_mute


def test_consult_transfer_uses_the_sdk_consult_fields() -> None:
    """The customer points at Bob's consult leg, Alice's leg ended with transfer.consult, Jane's one leg is expected."""
    scenario = gm.consult_transfer()
    (conversation,) = scenario.calls
    customer, acd, alice, jane, bob = conversation["participants"]
    assert (customer["consultParticipantId"], customer["held"], "user" in customer) == (bob["id"], True, False)
    assert (acd["purpose"], acd["state"]) == ("acd", "disconnected")
    assert (_user_id(alice), alice["state"]) == (gm.ALICE.id, "disconnected")
    assert alice["disconnectType"] == "transfer.consult"
    assert (_user_id(bob), bob["state"], bob["held"]) == (gm.BOB.id, "connected", False)
    assert [leg["id"] for leg in scenario.agent_legs()] == [jane["id"]] == [scenario.expected_participant_id]


def test_two_legs_same_call_has_an_old_and_a_new_leg_of_the_agent() -> None:
    """The agent's disconnected leg comes first and started earlier; the newer connected one is expected."""
    scenario = gm.two_legs_same_call()
    old, new = scenario.agent_legs()
    assert (old["state"], old["disconnectType"], new["state"]) == ("disconnected", "transfer", "connected")
    assert old["startTime"] < new["startTime"]
    assert new["id"] == scenario.expected_participant_id
    assert len(scenario.calls) == 1


def test_held_and_active_prefers_the_older_call_that_is_not_held() -> None:
    """Call A started later and its leg connected later but is held; call B's leg is the one to mute."""
    scenario = gm.held_and_active()
    call_a, call_b = scenario.calls
    leg_a, leg_b = scenario.agent_legs()
    assert call_a["participants"][0]["startTime"] > call_b["participants"][0]["startTime"]
    assert (leg_a["held"], leg_a["startHoldTime"], leg_b["held"]) == (True, "2026-11-23T10:06:40.000Z", False)
    assert leg_a["connectedTime"] > leg_b["connectedTime"]
    assert (scenario.expected_conversation_id, scenario.expected_participant_id) == (call_b["id"], leg_b["id"])


@pytest.mark.parametrize(
    ("make", "field"),
    [(gm.supervisor_monitoring, "monitoredParticipantId"), (gm.supervisor_coaching, "coachedParticipantId")],
)
def test_supervisor_listening_leg_is_not_muted(make: Callable[[], Scenario], field: str) -> None:
    """The supervisor's newer leg that points at Bob's leg is excluded; the supervisor's own call leg is expected."""
    scenario = make()
    watched, own = scenario.calls
    bob_leg = next(leg for leg in watched["participants"] if _user_id(leg) == gm.BOB.id)
    listening = next(leg for leg in watched["participants"] if _user_id(leg) == gm.SAM.id)
    other = {"monitoredParticipantId", "coachedParticipantId"} - {field}
    assert (listening[field], listening["state"], listening["held"]) == (bob_leg["id"], "connected", False)
    assert other & set(listening) == set()
    assert listening["connectedTime"] > scenario.participant(scenario.expected_participant_id or "")["connectedTime"]
    assert scenario.expected_conversation_id == own["id"]
    assert listening["id"] in scenario.must_not_mute


def test_customer_without_user_has_nothing_to_mute() -> None:
    """Only the customer's leg, which has no user, is connected; the agent's leg is disconnected."""
    scenario = gm.customer_without_user()
    connected = [leg for leg in _legs(scenario.calls) if leg["state"] == "connected"]
    assert [(leg["purpose"], "user" in leg, leg["address"]) for leg in connected] == [
        ("customer", False, "tel:+13175550100")
    ]
    assert [leg["state"] for leg in scenario.agent_legs()] == ["disconnected"]
    assert (scenario.expected_participant_id, scenario.expected_conversation_id) == (None, None)


def test_two_active_legs_is_decided_by_connected_time_not_start_time() -> None:
    """Both of the agent's legs qualify; the one that started earlier but connected later is expected."""
    scenario = gm.two_active_legs()
    leg_x, leg_y = scenario.agent_legs()
    assert all(_qualifies(leg, JANE.id) for leg in (leg_x, leg_y))
    assert leg_x["startTime"] > leg_y["startTime"]
    assert leg_x["connectedTime"] < leg_y["connectedTime"]
    assert (leg_y["connectedTime"], scenario.expected_participant_id) == ("2026-11-23T10:03:20.000Z", leg_y["id"])
    assert scenario.expected_conversation_id == scenario.calls[1]["id"]


def test_scenario_times_are_utc_milliseconds(scenario: Scenario) -> None:
    """Every time in every scenario is written as YYYY-MM-DDTHH:MM:SS.mmmZ and parses back to UTC."""
    times = [leg[key] for leg in _legs(scenario.calls) for key in leg if key.endswith("Time")]
    assert times
    for value in times:
        assert len(value) == 24
        assert value.endswith("Z")
        assert datetime.fromisoformat(value).tzinfo == UTC
