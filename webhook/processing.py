"""process(event_id): rules, guards, Genesys and the store; shared by the worker, the sweeper and replay."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from webhook import events as events_mod
from webhook.config import DEFAULT_TOLERANCE, Genesys, Settings
from webhook.errors import GenesysError, GenesysNoIdentityError, StoreError
from webhook.events import Envelope, InvalidItem, TicketEvent
from webhook.genesys.auth import TOKEN_PATH
from webhook.genesys.client import CONFIRM_SECONDS, Applied, GenesysClient
from webhook.genesys.explain import RULE_FACT, explain
from webhook.genesys.model import Attempt
from webhook.liveness import Liveness
from webhook.metrics import Metrics
from webhook.rules import Decision, Recording, decide
from webhook.signatures import TIMESTAMPED_SCHEMES
from webhook.store import BUSY, OLDER, OURS, EventRecord, EventState, FinalState, NewDelivery, NewEvent, Store, Undo

logger = logging.getLogger(__name__)

REPLAYABLE: tuple[EventState, ...] = ("received", "applied", "skipped", "no_call", "expired", "failed", "dry_run",
                                      "invalid")
# An agent's hold lasts past the holder's deadline by this much (its last request's read timeout ends by then), so
# that a crashed holder frees the agent on its own; the sweeper's stale claim (> budget + 5 s) comes after it.
HOLD_MARGIN_SECONDS = 5.0
AGENT_WAIT_SECONDS = 0.05  # how often an event waiting for another event of the same agent looks again
SAFETY_SOURCE = "safety"  # the source of the events that undo a mute or a pause left on past its limit
UNDO_STATUS = {"mute": "safety-unmute", "pause": "safety-resume"}
RECORDED = {"pause": "paused", "resume": "resumed"}


@dataclass(frozen=True)
class Outcome:
    """What one run of process() did: the action decided and the state the event moved from and to."""

    event: int
    action: str | None
    old_state: EventState | Literal["missing"]
    new_state: EventState | Literal["missing", "would act"]
    detail: str


@dataclass(frozen=True)
class Plan:
    """The decision for an event before Genesys is called: a final state now, or an action to carry out."""

    action: str
    state: FinalState | None
    detail: str
    recording: Recording | None = None  # also pause or resume the call's recording


@dataclass(frozen=True)
class Result:
    """How one run of an event ended: the action decided, its final state and detail, and the fields parsed again."""

    action: str | None
    state: FinalState
    detail: str
    fields: dict[str, object] = field(default_factory=dict)


def age_verdict(occurred_at: datetime, now: datetime, max_age: float) -> str | None:
    """Return why an event is too old to act on, or None when it is fresh enough."""
    age = (now - occurred_at).total_seconds()
    if age <= max_age:
        return None
    return (f"event is {age:.0f} s old (limit {max_age:.0f} s): too late to change the microphone; "
            "replay it with --force if it must still be applied")


def future_verdict(occurred_at: datetime, now: datetime, skew: float) -> str | None:
    """Return why an event dated ahead of now by more than the clock skew allowed is not acted on, or None."""
    ahead = (occurred_at - now).total_seconds()
    if ahead <= skew:
        return None
    return (f"event is dated {ahead:.0f} s in the future (more than the {skew:.0f} s of clock skew its source "
            "allows): acting on it would let it overrule every event for this agent until then; fix the sender's "
            "clock, or replay it with --force")


def budget_deadline(monotonic_now: float, *, budget: float, occurred_at: datetime, now: datetime,
                    max_age: float, force: bool) -> float:
    """Return the monotonic time by which Genesys must have accepted: the retry budget, never past the age limit."""
    left = budget
    if not force:
        left = min(left, max_age - (now - occurred_at).total_seconds())
    return monotonic_now + max(left, 0.0)


class Processor:
    """Carries an event from received (or any state, on replay) to a final state."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        genesys: GenesysClient | None,
        *,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        metrics: Metrics | None = None,
        liveness: Liveness | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.liveness = liveness or Liveness(store, clock)
        self.store = store
        self.settings = settings
        self.genesys = genesys
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep

    @property
    def live(self) -> bool:
        """Tell whether events are acted on in Genesys (not a dry run)."""
        return self.genesys is not None and not self.settings.genesys.dry_run

    def process(self, event_pk: int, *, states: tuple[EventState, ...] = ("received",),
                force: bool = False) -> Outcome:
        """Claim the event and carry it to a final state; the outcome says what happened and why."""
        self.liveness.ensure()
        now = self.clock()
        stale = now - timedelta(seconds=self.settings.stale_claim_seconds)
        before = self.store.claim(event_pk, now=now, stale_before=stale, states=states, owner=self.liveness.owner,
                                  alive_after=self.liveness.alive_after(now))
        if before is None:
            current = self.store.get(event_pk)
            if current is None:
                return Outcome(event_pk, None, "missing", "missing", f"no event with id {event_pk}")
            return Outcome(event_pk, current.action, current.state, current.state,
                           f"not processed: the event is {current.state} and another worker may hold it")
        try:
            result = self._run(before, now, force)
        except StoreError:
            raise
        except Exception:
            logger.exception("processing failed", extra={"event": event_pk})
            result = Result(None, "failed", "internal error while processing; see the service log")
        finished = self.clock()
        if not self.store.finish(event_pk, state=result.state, detail=result.detail, action=result.action,
                                 now=finished, fields=result.fields, claimed_at=now, release_hold=self.live):
            logger.warning("claim lost while processing; another worker finished the event",
                           extra={"event": event_pk, "state": result.state})
            return Outcome(event_pk, result.action, before.state, "processing", f"claim lost; {result.detail}")
        self.metrics.finished.labels(result.state).inc()
        if before.state == "received":
            self.metrics.latency.observe(max((finished - before.received_at).total_seconds(), 0.0))
        logger.info("event finished", extra={"event": event_pk, "source": before.source, "state": result.state})
        return Outcome(event_pk, result.action, before.state, result.state, result.detail)

    def preview(self, event_pk: int, *, force: bool = False) -> Outcome:
        """Say what process() would decide, without claiming, calling Genesys or writing anything."""
        record = self.store.get(event_pk)
        if record is None:
            return Outcome(event_pk, None, "missing", "missing", f"no event with id {event_pk}")
        event = self._event(record)
        if isinstance(event, InvalidItem):
            return Outcome(event_pk, None, record.state, "invalid", event.reason)
        plan = self._plan(event, record.id, self.clock(), force, write=False)
        return Outcome(event_pk, plan.action, record.state, plan.state or "would act", plan.detail)

    def _run(self, record: EventRecord, now: datetime, force: bool) -> Result:
        event = self._event(record)
        if isinstance(event, InvalidItem):
            return Result(None, "invalid", event.reason)
        fields = self._reparsed_fields(record, event)
        deadline = budget_deadline(self.monotonic(), budget=self.settings.retry_budget_seconds,
                                   occurred_at=event.occurred_at, now=now,
                                   max_age=self.settings.max_event_age_seconds,
                                   force=force or event.source == SAFETY_SOURCE) if self.live else None
        # Only a live run takes the agent's ordering slot: a dry run acts on nothing, so it must not make a later
        # event look older than one "already acted on".
        plan = self._plan(event, record.id, now, force, write=self.live, deadline=deadline)
        if plan.state is not None:
            return Result(plan.action, plan.state, plan.detail, fields)
        if deadline is None:
            detail = f"would {plan.detail}; dry run (GENESYS_DRY_RUN=true): no request made"
            return Result(plan.action, "dry_run", detail, fields)
        state, detail = self._act(record.id, event, plan, deadline)
        return Result(plan.action, state, detail, fields)

    def _event(self, record: EventRecord) -> TicketEvent | InvalidItem:
        """Rebuild the TicketEvent from the stored row; an invalid row is parsed again with today's mapping."""
        if not _needs_parse(record):
            assert record.ticket_id is not None and record.occurred_at is not None  # what _needs_parse checked
            return TicketEvent(record.source, record.event_id, record.occurred_at, record.ticket_id,
                               record.status or "", record.previous_status, record.agent or "",
                               record.conversation_id)
        source = self.settings.sources.get(record.source)
        if source is None:
            return InvalidItem(record.source, record.event_id, f"source {record.source} is no longer configured")
        delivery = self.store.delivery(record.delivery)
        if delivery is None:
            return InvalidItem(record.source, record.event_id, "its delivery (the stored body) is missing")
        envelope = Envelope(record.source, record.received_at, delivery.signed_at, delivery.message_id,
                            unsigned_time=source.scheme not in TIMESTAMPED_SCHEMES)
        items = events_mod.parse(delivery.raw_body, source.mapping, envelope, self.settings.agents)
        match = [i for i in items if i.event_id == record.event_id] or (items if len(items) == 1 else [])
        if not match:
            return InvalidItem(record.source, record.event_id, "the body no longer yields this event id")
        item = match[0]
        return replace(item, event_id=record.event_id) if isinstance(item, TicketEvent) else item

    @staticmethod
    def _reparsed_fields(record: EventRecord, event: TicketEvent) -> dict[str, object]:
        if not _needs_parse(record):
            return {}
        return {"ticket_id": event.ticket_id, "status": event.status, "previous_status": event.previous_status,
                "agent": event.agent, "conversation_id": event.conversation_id, "occurred_at": event.occurred_at}

    def _plan(self, event: TicketEvent, event_pk: int, now: datetime, force: bool, *, write: bool,
              deadline: float | None = None) -> Plan:
        """Decide; with write, take the agent's ordering slot (held until finish when deadline is given: live)."""
        decision = safety_decision(event) or decide(self.settings.rules, event)
        if not decision.acts:
            reason = f"{decision.detail} says none" if decision.rule else decision.detail
            return Plan("none", "skipped", f"{reason}: the microphone is left alone")
        target = f"{_asked(decision.action, decision.recording, event.agent)} by {decision.detail}"
        if force:
            return Plan(decision.action, None, f"{target}; forced past the age and ordering guards",
                        decision.recording)
        # A safety undo is never too late: whether it still applies is checked on the call itself.
        refused = None if event.source == SAFETY_SOURCE else self._out_of_time(event, now)
        if refused:
            return Plan(decision.action, *refused, decision.recording)
        agent = event.agent.lower()  # e-mails and UUIDs are case-insensitive: one slot per agent
        slot = self._take_slot(agent, event, event_pk, now, deadline) if write else self._slot(agent, event, event_pk)
        if slot == OLDER:
            return Plan(decision.action, "skipped",
                        f"a newer event for {event.agent} was already acted on; this older one would undo it",
                        decision.recording)
        if slot == BUSY:
            return Plan(decision.action, "failed",
                        f"another event for {event.agent} was still changing the microphone when this event's "
                        "retry budget ran out; replay it if it must still be applied", decision.recording)
        return Plan(decision.action, None, target, decision.recording)

    def _out_of_time(self, event: TicketEvent, now: datetime) -> tuple[FinalState, str] | None:
        """Return (state, detail) for an event too old to act on, or dated too far ahead; None when it is on time."""
        too_old = age_verdict(event.occurred_at, now, self.settings.max_event_age_seconds)
        if too_old:
            return "expired", too_old
        source = self.settings.sources.get(event.source)
        too_new = future_verdict(event.occurred_at, now, source.tolerance_seconds if source else DEFAULT_TOLERANCE)
        return ("skipped", too_new) if too_new else None

    def _take_slot(self, agent: str, event: TicketEvent, event_pk: int, now: datetime, deadline: float | None) -> str:
        """Advance the agent's slot; live, hold it while acting, waiting (within the deadline) for another holder."""
        while True:
            until = None
            if deadline is not None:
                until = now + timedelta(seconds=max(deadline - self.monotonic(), 0.0) + HOLD_MARGIN_SECONDS)
            slot = self.store.advance_agent(agent, occurred_at=event.occurred_at, event_pk=event_pk, now=now,
                                            hold_until=until)
            if slot != BUSY or deadline is None or self.monotonic() + AGENT_WAIT_SECONDS >= deadline:
                return slot
            self.sleep(AGENT_WAIT_SECONDS)
            now = self.clock()

    def _slot(self, agent: str, event: TicketEvent, event_pk: int) -> str:
        """What advance_agent would say, without writing (a preview does not wait for a holder)."""
        slot = self.store.agent_slot(agent)
        return OLDER if slot is not None and slot > (event.occurred_at, event_pk) else OURS

    def _act(self, event_pk: int, event: TicketEvent, plan: Plan, deadline: float) -> tuple[FinalState, str]:
        """Change the microphone and/or the recording through Genesys as the first identity that can; the state and
        detail of the result."""
        try:
            return self._change(event_pk, event, plan, deadline, self._recorder(event_pk))
        except GenesysError as exc:
            return "failed", failure_detail(exc, self.settings.genesys)

    def _change(self, event_pk: int, event: TicketEvent, plan: Plan, deadline: float,
                record: Callable[[Attempt], None]) -> tuple[FinalState, str]:
        assert self.genesys is not None
        genesys = self.genesys
        muted = {"mute": True, "unmute": False}.get(plan.action)
        located = None
        if event.source == SAFETY_SOURCE:  # undo only what the service left, on the call it left it on
            located = genesys.locate(event.agent, conversation_id=event.conversation_id, deadline=deadline,
                                     record=record, fresh=True)
            changed = _no_longer_left(located, muted, event)
            if changed is None and located is not None and plan.recording is not None:  # still paused?
                seen = genesys.confirm(located, muted=None, recording="pause", deadline=deadline, record=record,
                                       seconds=0)
                changed = f"the recording of call {event.conversation_id} is not paused any more ({seen})" \
                    if seen else None
            if changed:
                return "skipped", f"nothing to undo: {changed}"
        applied = None
        if muted is not None:
            applied = genesys.act(event.agent, muted, conversation_id=event.conversation_id, deadline=deadline,
                                  record=record)
            if applied is None:
                return "no_call", (f"{event.agent} is not on a live voice call (no connected leg of theirs that is "
                                   f"not held or monitoring); nothing to {plan.action}")
        detail = _applied_detail(plan, applied) if applied else ""
        base = applied or located
        if plan.recording is not None:
            base = base or genesys.locate(event.agent, conversation_id=event.conversation_id, deadline=deadline,
                                          record=record)
            if base is None:
                return "no_call", f"{event.agent} is not on a live voice call; no recording to {plan.recording}"
            try:
                who = genesys.set_recording(base.target, plan.recording, deadline=deadline, record=record)
            except GenesysError as exc:
                if applied is None:
                    raise
                why = failure_detail(exc, self.settings.genesys)
                return "failed", f"{detail}; but the recording was NOT {RECORDED[plan.recording]}: {why}"
            recorded = (f"{RECORDED[plan.recording]} the recording of call {base.target.conversation_id} as {who}")
            detail = f"{detail}; {recorded}" if detail else f"{recorded}; asked: {plan.detail}"
        assert base is not None
        if self.settings.genesys.confirm:
            seen = genesys.confirm(base, muted=muted, recording=plan.recording, deadline=deadline, record=record)
            if seen:
                return "failed", (f"Genesys accepted the change but the call, read back for up to "
                                  f"{CONFIRM_SECONDS:g} s, shows otherwise: {seen}. Done: {detail}")
            detail += "; confirmed by reading the call back"
        self._keep_limits(event_pk, event, muted, plan.recording, base)
        return "applied", detail

    def _keep_limits(self, event_pk: int, event: TicketEvent, muted: bool | None, recording: Recording | None,
                     base: Applied) -> None:
        """Remember when to undo a mute or a pause the service just applied; forget it once it is undone."""
        agent, now = event.agent.lower(), self.clock()
        for kind, on, limit in (("mute", muted, self.settings.max_mute_seconds),
                                ("pause", None if recording is None else recording == "pause",
                                 self.settings.max_pause_seconds)):
            if on is None or event.source == SAFETY_SOURCE:  # a safety event's undo was taken when it was stored
                continue
            if on and limit:
                self.store.schedule_undo(Undo(agent, kind, event_pk, base.target.conversation_id,
                                              base.target.participant_id, now + timedelta(seconds=limit)))
            elif not on:
                self.store.cancel_undo(agent, kind)

    def _recorder(self, event_pk: int) -> Callable[[Attempt], None]:
        def record(attempt: Attempt) -> None:
            self.metrics.genesys_requests.labels(str(attempt.status or "none")).inc()
            if attempt.path == TOKEN_PATH:
                self.metrics.token_fetches.inc()
            self.store.add_attempt(event_pk, replace(attempt, at=self.clock()))
        return record


def _needs_parse(record: EventRecord) -> bool:
    """Tell whether a row must be parsed from its raw body: stored invalid, or imported by `replay --file`."""
    return record.state == "invalid" or record.ticket_id is None or record.occurred_at is None


def safety_decision(event: TicketEvent) -> Decision | None:
    """Return what a safety event undoes (its status says), or None for any other event (the rules decide)."""
    if event.source != SAFETY_SOURCE:
        return None
    if event.status == UNDO_STATUS["mute"]:
        return Decision("unmute", None, "the safety limit ([processing] max_mute_seconds)")
    return Decision("none", None, "the safety limit ([processing] max_pause_seconds)", "resume")


def safety_event(undo: Undo, now: datetime) -> tuple[NewDelivery, NewEvent]:
    """Return the delivery and the stored event that undo a mute or a pause nothing else undid (source "safety")."""
    body = json.dumps({"undo": undo.kind, "event": undo.event, "agent": undo.agent,
                       "conversation_id": undo.conversation_id, "due_at": undo.due_at.isoformat()}).encode()
    return (NewDelivery(source=SAFETY_SOURCE, received_at=now, raw_body=body),
            NewEvent(source=SAFETY_SOURCE, event_id=f"undo-{undo.kind}-{undo.event}", state="received", detail="",
                     received_at=now, ticket_id=f"event {undo.event}", status=UNDO_STATUS[undo.kind],
                     agent=undo.agent, conversation_id=undo.conversation_id, occurred_at=undo.due_at))


def _no_longer_left(located: Applied | None, muted: bool | None, event: TicketEvent) -> str | None:
    """Say why a safety undo no longer applies (the agent left the call, someone unmuted them), or None."""
    if located is None:
        return f"{event.agent} is no longer on call {event.conversation_id}"
    if muted is False and located.target.muted is False:
        return f"{event.agent} is no longer muted on call {event.conversation_id}"
    return None


def _asked(action: str, recording: Recording | None, agent: str) -> str:
    """Say what an event asks: mute jane, and pause the recording."""
    parts = [f"{action} {agent}"] if action != "none" else []
    if recording is not None:
        parts.append(f"{recording} the recording of {agent}'s call")
    return " and ".join(parts)


def _applied_detail(plan: Plan, applied: Applied) -> str:
    verb = "muted" if plan.action == "mute" else "unmuted"
    target = applied.target
    note = f"; {target.note}" if target.note else ""
    return (f"{verb} {target.user_id} on call {target.conversation_id} (participant {target.participant_id}) as "
            f"{applied.identity}{note}; asked: {plan.detail}")


def failure_detail(error: GenesysError, genesys: Genesys) -> str:
    """Say what a Genesys failure means and what to do: why no identity could act, or the explanation of the error."""
    return no_identity_detail(error, genesys) if isinstance(error, GenesysNoIdentityError) else explain(error)


def no_identity_detail(error: GenesysNoIdentityError, genesys: Genesys) -> str:
    """Say why no identity could act for the agent, and what fixes it: the agent connects, or a service user does."""
    if genesys.users_configured:
        remedy = (f"{error.agent} opens {genesys.connect_url} once to connect (or reconnect), or an administrator "
                  "connects a service user with `flask --app wsgi genesys connect --service-user`; then replay "
                  "the event if the call is still live")
    else:
        remedy = ("set up the authorization-code client (GENESYS_USER_CLIENT_ID, GENESYS_USER_CLIENT_SECRET, "
                  "PUBLIC_URL) so that agents or a service user can connect (README: \"Acting as a user\")")
    rule = f" (The participant rule: {RULE_FACT}.)" if "participant rule" in str(error) else ""
    return f"Genesys: {error}. To do: {remedy}.{rule}"
