"""A usage event flagged ``usage_unknown`` (a provider may bill a request whose usage never came back) is rated as
its estimate and the flag passed on to billing on ``UsageRated``, which decides the charge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from tollgate.events.v1 import usage_pb2
from tollgate_common.db import session_maker
from tollgate_common.events import Envelope
from tollgate_metering.application import Metering
from tollgate_metering.domain import DEMO_PRICE_BOOK
from tollgate_metering.repository import open_database
from tollgate_metering.tables import messaging


async def test_usage_unknown_is_rated_as_estimated_and_passed_on(tmp_path: Path, make_usage: Any) -> None:
    engine = await open_database(f"sqlite:///{tmp_path}/m.db", "metering")
    try:
        metering = Metering(session_maker(engine))
        await metering.register_price_book(DEMO_PRICE_BOOK)
        timed_out = make_usage("req_timeout", prompt=900, completion=0, outcome=usage_pb2.REQUEST_OUTCOME_FAILED)
        message = usage_pb2.UsageRecorded.FromString(timed_out.data)
        message.usage_unknown = True
        flagged = Envelope(id=timed_out.id, source=timed_out.source, type=timed_out.type,
                           subject=timed_out.subject, time=timed_out.time, data=message.SerializeToString())
        async with metering.sessions.begin() as s:
            batch = await metering.record_usage(s, [flagged, make_usage("req_ok")], publish=True)
        assert {r.record.request_id for r in batch.rated} == {"req_timeout", "req_ok"}
        async with metering.sessions() as s:
            rows = (await s.execute(select(messaging.outbox.c.event_id, messaging.outbox.c.value))).all()
        published = {row.event_id: usage_pb2.UsageRated.FromString(row.value) for row in rows}
        assert published["req_timeout"].usage_unknown and published["req_timeout"].resale_price_nanos > 0
        assert published["req_timeout"].usage.prompt_tokens == 900
        assert not published["req_ok"].usage_unknown
    finally:
        await engine.dispose()
