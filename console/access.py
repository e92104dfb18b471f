"""Who may do what on the console: one table, deny by default.

Roles are the security model's (``charging/security/roles.py``); the console grants on
each page and action what the gRPC table grants on the methods behind it. ``network``
and ``channel`` are machine roles and open nothing here.

Personal data (names, postal and email addresses, identity documents, interactions and
tickets, which hold what customers said) is shown to ``crm``, ``billing`` and
``operator``; ``monitor`` sees counts, states, plans, balances and the operations page,
and customers only by their ids.
"""

from __future__ import annotations

from charging.security.roles import BILLING, CRM, MONITOR, OPERATOR

STAFF_ROLES = (CRM, BILLING, OPERATOR, MONITOR)
PERSONAL_DATA = frozenset((CRM, BILLING, OPERATOR))

ACTIONS: dict[str, frozenset[str]] = {
    name: frozenset(roles)
    for name, roles in {
        # reading
        "search": (CRM, BILLING, OPERATOR, MONITOR),
        "customer": (CRM, BILLING, OPERATOR, MONITOR),
        "order": (CRM, OPERATOR),
        "invoice_pdf": (CRM, BILLING, OPERATOR),
        "operations": (OPERATOR, MONITOR),
        # acquisition and line orders
        "apply": (CRM,),
        "line_order": (CRM,),
        # money
        "top_up": (OPERATOR,),
        "sell_bundle": (OPERATOR,),
        "record_payment": (BILLING,),
        "promise_to_pay": (BILLING,),
        # customer care
        "interaction": (CRM,),
        "open_ticket": (CRM,),
        "move_ticket": (CRM,),
        "open_dispute": (CRM, BILLING),
        "resolve_dispute": (BILLING, OPERATOR),
    }.items()
}


def allowed(action: str, roles: frozenset[str]) -> bool:
    """Whether a staff member with ``roles`` may do ``action``; an action missing from the
    table is allowed to nobody."""
    return bool(ACTIONS.get(action, frozenset()) & roles)


def sees_personal_data(roles: frozenset[str]) -> bool:
    return bool(PERSONAL_DATA & roles)
