"""Producer identity on Kafka records: what verifies, what is refused and why, and the consumer parking what is
refused (real embedded broker, real SQLite)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from tollgate.events.v1 import billing_pb2, policy_pb2, usage_pb2
from tollgate_common.db import create_engine, create_schema, messaging_tables, session_maker
from tollgate_common.event_auth import SIGNATURE_HEADER, EventSigner, EventVerifier, SigningProducer, producer_of
from tollgate_common.events import EVENT_TYPES, Envelope, Topics, envelope_for
from tollgate_common.internal_auth import InternalKeys
from tollgate_common.kafka import DbOffsetConsumer, OutboxRelay, ensure_topics, make_producer
from tollgate_dev.broker import EmbeddedBroker

SECRET = "s" * 40
KEYS = InternalKeys(SECRET)


def _recorded(request_id: str = "req_1", service: str = "ingress") -> Envelope:
    msg = usage_pb2.UsageRecorded(request_id=request_id, account_id="acct_1", model="gpt-4o-mini")
    return envelope_for(msg, id=request_id, service=service, subject="acct_1")


def _rated(request_id: str = "req_1", service: str = "metering", price: int = 1000) -> Envelope:
    msg = usage_pb2.UsageRated(request_id=request_id, account_id="acct_1", hold_id=request_id,
                               resale_price_nanos=price)
    return envelope_for(msg, id=request_id, service=service, subject="acct_1")


def _received(headers: list[tuple[str, bytes]], value: bytes) -> tuple[Envelope, list[tuple[str, bytes]]]:
    """What a consumer sees: the envelope parsed from the record, and the raw headers."""
    return Envelope.from_kafka(headers, value), headers


def test_each_type_is_accepted_only_from_its_producer_with_its_signature() -> None:
    verify = EventVerifier(KEYS)
    rated = _rated()
    assert verify(*_received(EventSigner("metering", KEYS).sign(rated.headers(), rated.data), rated.data)) is None
    recorded = _recorded()
    assert verify(*_received(EventSigner("ingress", KEYS).sign(recorded.headers(), recorded.data),
                             recorded.data)) is None

    # UsageRated claiming to come from ingress (correctly signed by ingress): wrong producer for the type.
    from_ingress = _rated(service="ingress")
    reason = verify(*_received(EventSigner("ingress", KEYS).sign(from_ingress.headers(), from_ingress.data),
                               from_ingress.data))
    assert reason is not None and "only be produced by metering" in reason
    # Ingress signing a record that names metering as its source: its key is not metering's.
    spoofed = EventSigner("ingress", KEYS).sign(rated.headers(), rated.data)
    assert verify(*_received(spoofed, rated.data)) == "signature does not verify as metering's"


def test_a_policy_decision_may_come_from_policy_or_from_ingress_and_from_no_one_else() -> None:
    """Ingress decides DLP in process and records the same PolicyDecided policy would (CO_PRODUCERS)."""
    verify = EventVerifier(KEYS)

    def decided(service: str) -> tuple[Envelope, list[tuple[str, bytes]]]:
        env = envelope_for(policy_pb2.PolicyDecided(request_id="req_1", account_id="acct_1"), id="req_1:request",
                           service=service, subject="acct_1")
        return _received(EventSigner(service, KEYS).sign(env.headers(), env.data), env.data)

    assert verify(*decided("policy")) is None
    assert verify(*decided("ingress")) is None
    reason = verify(*decided("router"))
    assert reason is not None and "only be produced by policy" in reason
    # Ingress signing a decision that names policy as its source: its key is not policy's.
    env = envelope_for(policy_pb2.PolicyDecided(request_id="r2"), id="r2:request", service="policy", subject="a")
    assert verify(*_received(EventSigner("ingress", KEYS).sign(env.headers(), env.data), env.data)) == (
        "signature does not verify as policy's")


def test_unsigned_tampered_and_foreign_records_are_refused() -> None:
    verify = EventVerifier(KEYS)
    rated = _rated(price=1000)
    signed = EventSigner("metering", KEYS).sign(rated.headers(), rated.data)

    assert verify(*_received(rated.headers(), rated.data)) == f"unsigned event (no {SIGNATURE_HEADER} header)"
    # The same signature over another price, another account or another event id.
    assert verify(*_received(signed, _rated(price=1).data)) is not None
    other_subject = [(k, b"acct_2" if k == "ce_subject" else v) for k, v in signed]
    assert verify(*_received(other_subject, rated.data)) is not None
    other_id = [(k, b"req_2" if k == "ce_id" else v) for k, v in signed]
    assert verify(*_received(other_id, rated.data)) is not None
    # Signed with another deployment's secret.
    foreign = EventSigner("metering", InternalKeys("x" * 40)).sign(rated.headers(), rated.data)
    assert verify(*_received(foreign, rated.data)) == "signature does not verify as metering's"
    # A type nobody produces.
    odd = Envelope(id="e", source="//tollgate/metering", type="tollgate.usage.v1.usage.forgiven", subject="a",
                   time="", data=b"")
    assert verify(odd, EventSigner("metering", KEYS).sign(odd.headers(), b"")) == (
        "no service may produce this event type"
    )


def test_previous_secret_verifies_while_rotating_and_no_secret_checks_nothing() -> None:
    rated = _rated()
    old = EventSigner("metering", InternalKeys("o" * 40)).sign(rated.headers(), rated.data)
    rotating = EventVerifier(InternalKeys("n" * 40, previous="o" * 40))
    assert rotating(*_received(old, rated.data)) is None
    assert EventVerifier(InternalKeys("n" * 40))(*_received(old, rated.data)) is not None

    assert EventVerifier(InternalKeys())(*_received(rated.headers(), rated.data)) is None
    assert EventSigner("metering", InternalKeys()).sign(rated.headers(), rated.data) == rated.headers()


def test_every_event_type_has_exactly_the_expected_producer() -> None:
    assert {t: producer_of(t) for t in EVENT_TYPES if producer_of(t) is None} == {}
    assert producer_of("tollgate.usage.v1.usage.rated") == "metering"
    assert producer_of("tollgate.usage.v1.usage.recorded") == "ingress"
    assert producer_of("tollgate.billing.v1.credits.added") == "billing"
    assert producer_of("tollgate.attempts.v1.attempt.recorded") == "router"
    assert producer_of("tollgate.usage.v1.usage.forgiven") is None


def test_a_record_signed_again_keeps_one_signature() -> None:
    signer = EventSigner("metering", KEYS)
    rated = _rated()
    twice = signer.sign(signer.sign(rated.headers(), rated.data), rated.data)
    assert [k for k, _ in twice].count(SIGNATURE_HEADER) == 1
    assert EventVerifier(KEYS)(*_received(twice, rated.data)) is None


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    b = EmbeddedBroker()
    bootstrap = b.start()
    asyncio.run(ensure_topics(bootstrap, Topics.ALL))
    yield bootstrap
    b.stop()


async def test_consumer_applies_signed_events_and_parks_forged_ones(broker: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    md = MetaData()
    tables = messaging_tables(md, consumer=True)
    effects = Table("effects", md, Column("id", Integer, primary_key=True), Column("event_id", String(50)))
    engine = create_engine(f"sqlite:///{tmp_path}/t.db")
    await create_schema(engine, md)
    sessions = session_maker(engine)
    topic = Topics.USAGE_RATED

    # The legitimate producer: metering's outbox, relayed by a signing producer.
    async with sessions.begin() as s:
        for i in range(3):
            await tables.add_to_outbox(s, topic, "acct_1", _rated(f"ok_{i}"))
    producer = make_producer(broker, signer=EventSigner("metering", KEYS))
    assert isinstance(producer, SigningProducer)
    await producer.start()
    try:
        assert await OutboxRelay(sessions, tables, producer).publish_pending() == 3
    finally:
        await producer.stop()
    # An attacker on the broker: unsigned, wrong producer, and a forged signature.
    forger = make_producer(broker)
    await forger.start()
    try:
        unsigned = _rated("forged_unsigned", price=10**12)
        await forger.send_and_wait(topic, unsigned.data, key=b"acct_1", headers=unsigned.headers())
        wrong = _rated("forged_by_ingress", service="ingress", price=10**12)
        await forger.send_and_wait(topic, wrong.data, key=b"acct_1",
                                   headers=EventSigner("ingress", KEYS).sign(wrong.headers(), wrong.data))
        fake = _rated("forged_signature", price=10**12)
        await forger.send_and_wait(topic, fake.data, key=b"acct_1",
                                   headers=[*fake.headers(), (SIGNATURE_HEADER, b"v1=" + b"0" * 64)])
        # A billing event on the same topic, properly signed by billing: a type the consumer's table allows.
        credit = envelope_for(billing_pb2.CreditsAdded(account_id="acct_1"), id="cr_1", service="billing",
                              subject="acct_1")
        await forger.send_and_wait(topic, credit.data, key=b"acct_1",
                                   headers=EventSigner("billing", KEYS).sign(credit.headers(), credit.data))
    finally:
        await forger.stop()

    async def handler(session: AsyncSession, env: Envelope, _record: object) -> None:
        await session.execute(insert(effects).values(event_id=env.id))

    consumer = DbOffsetConsumer(bootstrap=broker, topics=[topic], group_id="event-auth", sessions=sessions,
                                tables=tables, handler=handler, verify=EventVerifier(KEYS))
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        for _ in range(200):
            if consumer.applied + consumer.parked >= 7:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task
    assert tables.parked_events is not None
    async with sessions() as s:
        applied = sorted((await s.execute(select(effects.c.event_id))).scalars())
        parked = dict((await s.execute(select(tables.parked_events.c.event_id,
                                              tables.parked_events.c.reason))).all())
        count = (await s.execute(select(func.count()).select_from(tables.parked_events))).scalar_one()
    assert applied == ["cr_1", "ok_0", "ok_1", "ok_2"]
    assert count == 3
    assert "unsigned event" in parked["forged_unsigned"]
    assert "only be produced by metering" in parked["forged_by_ingress"]
    assert "does not verify" in parked["forged_signature"]
    await engine.dispose()
