"""Interactions and trouble tickets in PostgreSQL, the system of record (issue 11): rows
with their audit entry in one transaction, sealed free text, concurrent moves of one
ticket taking turns, and the records Redis kept before moved once, resumably."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis

from charging.server import App
from charging.v1 import crm_pb2, crm_pb2_grpc
from provisioning import care_legacy, keys
from provisioning.customer_care import Interaction, Ticket, TicketChange
from tests.test_acquisition import application


async def rows(app: App, query: str, *params: object) -> list[tuple[object, ...]]:
    assert app.database is not None
    async with app.database.connection() as conn:
        return list(await (await conn.execute(query, params)).fetchall())


async def test_care_records_are_rows_with_their_audit_entries(
    crm: crm_pb2_grpc.CrmStub, app: App, r: redis.Redis
) -> None:
    who = (await crm.SubmitApplication(application("c-1"))).customer_id
    note = "Anna Muster called about roaming"
    added = await crm.AddInteraction(
        crm_pb2.Interaction(customer_id=who, channel="PHONE", note=note, references=["recording://calls/7"])
    )
    ticket = await crm.OpenTicket(crm_pb2.Ticket(customer_id=who, topic="SERVICE", summary="Muster: no data"))
    await crm.MoveTicket(crm_pb2.TicketMove(ticket_id=ticket.id, state="IN_PROGRESS", note="checked the APN"))
    # nothing of it in Redis; in PostgreSQL, sealed
    assert not r.exists(keys.interactions(who), keys.tickets(who), keys.ticket(ticket.id))
    (stored,) = await rows(
        app, "SELECT sealed_note, sealed_refs, channel FROM interactions WHERE customer_id = %s", who
    )
    assert str(stored[0]).startswith("enc:") and "Muster" not in str(stored[0]) and stored[2] == "PHONE"
    changes = await rows(
        app, "SELECT state FROM ticket_changes WHERE ticket_id = %s ORDER BY change_no", int(ticket.id)
    )
    assert [c[0] for c in changes] == ["OPEN", "IN_PROGRESS"]
    audit = await rows(app, "SELECT action, details FROM audit WHERE subject = %s ORDER BY occurred_at, action", who)
    assert sorted(a[0] for a in audit if a[0] in ("interaction_added", "ticket_opened", "ticket_moved")) == [
        "interaction_added",
        "ticket_moved",
        "ticket_opened",
    ]
    assert {"interaction": added.id, "channel": "PHONE"} in [a[1] for a in audit]
    records = await crm.GetCustomerRecords(crm_pb2.CustomerRef(customer_id=who))
    assert [(i.note, list(i.references)) for i in records.interactions] == [(note, ["recording://calls/7"])]
    assert [(h.state, h.note) for h in records.tickets[0].history] == [("OPEN", ""), ("IN_PROGRESS", "checked the APN")]


async def test_concurrent_moves_of_one_ticket_take_turns(crm: crm_pb2_grpc.CrmStub, app: App) -> None:
    who = (await crm.SubmitApplication(application("c-2"))).customer_id
    ticket = await crm.OpenTicket(crm_pb2.Ticket(customer_id=who, topic="OTHER", summary="billing address"))
    # OPEN may become IN_PROGRESS, RESOLVED or CLOSED; whichever comes first, the others
    # see its state: never two changes numbered alike, never a move from a stale state
    results = await asyncio.gather(
        *(
            crm.MoveTicket(crm_pb2.TicketMove(ticket_id=ticket.id, state=state, note=state))
            for state in ("CLOSED", "CLOSED", "CLOSED", "CLOSED")
        ),
        return_exceptions=True,
    )
    moved = [x for x in results if isinstance(x, crm_pb2.Ticket)]
    refused = [x for x in results if isinstance(x, grpc.aio.AioRpcError)]
    assert len(moved) == 1 and len(refused) == 3
    assert {e.code() for e in refused} == {grpc.StatusCode.INVALID_ARGUMENT}
    changes = await rows(app, "SELECT change_no, state FROM ticket_changes WHERE ticket_id = %s", int(ticket.id))
    assert sorted(changes) == [(1, "OPEN"), (2, "CLOSED")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.MoveTicket(crm_pb2.TicketMove(ticket_id="no-such", state="CLOSED"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_records_redis_kept_before_are_moved_once_and_ids_continue(crm: crm_pb2_grpc.CrmStub, app: App) -> None:
    assert app.redis is not None and app.database is not None and app.acquisition is not None
    who = (await crm.SubmitApplication(application("c-3"))).customer_id
    sealer = app.acquisition.sealer
    # as an older server left them: ids 5 and 6 of an interaction counter at 6, ticket 3 of 3
    for i, text in ((5, "first call"), (6, "second call")):
        await app.redis.rpush(
            keys.interactions(who), Interaction(str(i), "SHOP", text, ("file://x",), 1_700_000_000 + i).to_redis(sealer)
        )
    history = (TicketChange("OPEN", 1_700_000_000, ""), TicketChange("RESOLVED", 1_700_000_100, "done"))
    old = Ticket("3", who, "OTHER", "old one", "", "", "RESOLVED", history)
    await app.redis.set(keys.ticket("3"), old.to_redis(sealer))
    await app.redis.rpush(keys.tickets(who), "3")
    await app.redis.set(keys.INTERACTION_SEQ, 6)
    await app.redis.set(keys.TICKET_SEQ, 3)
    # a run that stopped after writing the ticket's first change: the next one completes it
    async with app.database.connection() as conn:
        await care_legacy._ticket(conn, sealer, Ticket("3", who, "OTHER", "old one", "", "", "OPEN", history[:1]))
    await app.redis.delete(keys.CARE_MOVED)
    first = await care_legacy.move_once(app.redis, app.database, sealer)
    assert first is not None and (first.interactions, first.tickets) == (2, 1)
    assert await care_legacy.move_once(app.redis, app.database, sealer) is None
    assert not await app.redis.exists(keys.interactions(who), keys.tickets(who), keys.ticket("3"))
    records = await crm.GetCustomerRecords(crm_pb2.CustomerRef(customer_id=who))
    assert [(i.id, i.note) for i in records.interactions] == [("5", "first call"), ("6", "second call")]
    assert [(t.id, t.state, [h.note for h in t.history]) for t in records.tickets] == [("3", "RESOLVED", ["", "done"])]
    # the series goes on past what Redis counted
    added = await crm.AddInteraction(crm_pb2.Interaction(customer_id=who, channel="EMAIL", note="third"))
    ticket = await crm.OpenTicket(crm_pb2.Ticket(customer_id=who, topic="OTHER", summary="new one"))
    assert int(added.id) > 6 and int(ticket.id) > 3
