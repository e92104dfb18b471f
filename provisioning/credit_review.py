"""A customer's credit class changed after it became a customer (a review, a bureau's
update): the system of record first, then where Redis acts on it.

The new class's terms (``credit.reclassed``) become a ``credit`` version of the customer
with its audit entry (who, why, the terms) in PostgreSQL; then Redis's copy of the
customer (what further lines are offered from: postpaid or not, how many lines, the
limit a new line's account gets) and the credit limit of the postpaid billing accounts
its lines are billed to (shared over their lines at once). Every step sets absolutely,
so the same change asked again (a retry after a crash between the steps) finishes what
the first left and changes nothing else.
"""

from __future__ import annotations

from charging.errors import InvalidRequest, NotFound
from provisioning.acquisition import Acquisition
from provisioning.credit import reclassed
from provisioning.customers import Customer

MAX_REASON = 200


async def change_credit_class(
    acquisition: Acquisition, customer_id: str, credit_class: str, credit_limit_micros: int, reason: str
) -> Customer:
    """Apply the change; answers the customer as the system of record has it now. Bad
    input is ``InvalidRequest`` naming the field, with nothing changed."""
    try:
        credit = reclassed(credit_class, credit_limit_micros)
    except ValueError as exc:
        field, message = exc.args
        raise InvalidRequest(str(field), str(message)) from None
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON:
        raise InvalidRequest("reason", f"is required, at most {MAX_REASON} characters")
    records = acquisition.recorded()
    if await records.get(customer_id) is None:
        raise NotFound("no such customer")
    await records.change_credit(customer_id, credit, reason)
    await acquisition.customers.set_credit(customer_id, credit)
    billing = acquisition.billing
    if billing is not None:
        lines = await acquisition.customer_lines(customer_id)
        await billing.credit_changed([line.account_id for line in lines], credit.credit_limit_micros)
    customer = await records.get(customer_id)
    assert customer is not None  # it was, and a credit change does not withdraw it
    return customer
