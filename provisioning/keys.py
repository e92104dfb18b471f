"""Every Redis key provisioning (the CRM, orders, the provisioning worker) owns.

Other packages read or change these only through provisioning's functions, never by key
name (as provisioning reaches charging's accounts only through ``charging.subscribers``).
The coverage tables keep their keys in ``coverage.py`` for now (see its docstring), under
``COVERAGE`` here.

Every key below starts with the hash tag ``{crm}`` (written ``crm:`` in this list): one
slot of a Redis Cluster holds the whole CRM, because its transactions join a customer's
records with the global indexes (customers by kind and state, names, submitted orders,
the worker's due list) and an order's transaction with the worker's line. That is a
deliberate limit: CRM writes come from people and orders (a few per second at a large
operator), not from the network, and the charging path never reads them (a line's state
is on its charging account). Keys of before the tag are renamed once at start on a
single server (``adopt_untagged``).

    crm:salt                        the salt of identity and address fingerprints
    crm:seq:<what>                  id counters (customer, unit, interaction, ticket, dispute)
    crm:customer:<id>               hash: a customer (``customers.Customer``)
    crm:customers                   sorted set of every customer id (score = the id)
    crm:customers:kind:<kind>       ... of one kind
    crm:customers:state:<state>     ... in one state
    crm:lines:<customer>            list: the numbers of a customer's lines
    crm:line:<msisdn>               hash: a line (``lines.Line``)
    crm:unit:<id>                   hash: an organisation unit (``organisation.OrgUnit``)
    crm:units:<customer>            list: a corporate customer's units, the root first
    crm:order:<id>                  JSON: an order (``orders.Order``) while it runs or is in progress
    crm:order:<id>:work             hash: the request and what a run has made (``orders.py``)
    crm:orders:submitted            sorted set: SUBMITTED order -> lease deadline (ms)
    crm:orders:of:<customer>        list: a customer's orders, in the order decided
    crm:orders:cdr                  list: record outbox of order decisions' audit entries
    crm:orders:rows                 list: record outbox of orders' and lines' rows (``order_records.py``)
    crm:orders:moved                set once the orders and lines Redis kept before are rows (``orders_legacy.py``)
    crm:owners:filled               set once lines' rows of before 0015 name their owner (``line_owners.py``)
    crm:quarantine:<msisdn>         when a terminated number may be given out again (s)
    crm:identity:<print>            the customer registered with an identity document
    crm:name:<print>                set: customers with a word in their name (``names.py``)
    crm:velocity:<print>:<day>:apps set: applications with a document or address that day
    crm:blacklist                   hash: fingerprint -> reason
    crm:decisions                   list: screening decisions of before (dropped by ``orders_legacy.py``)
    crm:interactions:<customer>     list: interactions (JSON), as kept before PostgreSQL
    crm:ticket:<id>, crm:tickets:<customer>    a trouble ticket (JSON), a customer's ids: the same
    crm:care:moved                  set once those are in PostgreSQL (``care_legacy.py``)
    crm:customers:moved             set once customers and units are in PostgreSQL (``customer_legacy.py``)
    crm:dispute:<id>, crm:disputes:<customer>  a dispute (JSON), a customer's ids
    crm:stats:adds:<day>, crm:stats:disc:<day>, crm:stats:active   the customer base
    prov:line:<msisdn>              hash: a line's desired and acknowledged network state
    prov:due, prov:dead, prov:changes   the worker's due index, dead letters, wake-ups
"""

from __future__ import annotations

TAG = "{crm}"
UNTAGGED = ("crm:*", "prov:*")  # the names of before the tag (``adopt_untagged``)
COVERAGE = "{crm}:coverage"  # the coverage document store's prefix (``coverage.py``)

SALT = "{crm}:salt"
CUSTOMER_SEQ = "{crm}:seq:customer"
UNIT_SEQ = "{crm}:seq:unit"
INTERACTION_SEQ = "{crm}:seq:interaction"
TICKET_SEQ = "{crm}:seq:ticket"
DISPUTE_SEQ = "{crm}:seq:dispute"
# Set once the interactions and tickets Redis kept before are in PostgreSQL (care_legacy.py).
CARE_MOVED = "{crm}:care:moved"
# Set once the customers and units Redis kept are recorded in PostgreSQL (customer_legacy.py).
CUSTOMERS_MOVED = "{crm}:customers:moved"

CUSTOMERS = "{crm}:customers"
ORDER_RECORDS = "{crm}:orders:cdr"  # order decisions' audit entries until the relay moved them
SUBMITTED = "{crm}:orders:submitted"
ORDER_ROWS = "{crm}:orders:rows"  # orders' and lines' rows until the relay moved them (order_records.py)
ORDERS_MOVED = "{crm}:orders:moved"  # set once Redis's orders and lines are rows (orders_legacy.py)
# set once every line's latest row names its owner type and unit (line_owners.py)
LINE_OWNERS_FILLED = "{crm}:owners:filled"
BLACKLIST = "{crm}:blacklist"
DECISIONS = "{crm}:decisions"  # written no more: each decision is its order's step row
ACTIVE_LINES = "{crm}:stats:active"

DUE = "{crm}:prov:due"
DEAD = "{crm}:prov:dead"
CHANGES = "{crm}:prov:changes"


def customer(customer_id: str) -> str:
    return "{crm}:customer:" + customer_id


def kind_index(kind: str) -> str:
    return "{crm}:customers:kind:" + kind


def state_index(state: str) -> str:
    return "{crm}:customers:state:" + state


def customer_lines(customer_id: str) -> str:
    return "{crm}:lines:" + customer_id


def line(msisdn: str) -> str:
    return "{crm}:line:" + msisdn


def unit(unit_id: str) -> str:
    return "{crm}:unit:" + unit_id


def units(customer_id: str) -> str:
    return "{crm}:units:" + customer_id


def order(order_id: str) -> str:
    return "{crm}:order:" + order_id


def order_work(order_id: str) -> str:
    return "{crm}:order:" + order_id + ":work"


def customer_orders(customer_id: str) -> str:
    return "{crm}:orders:of:" + customer_id


def quarantine(msisdn: str) -> str:
    """When a terminated number may be given out again (Unix time, s)."""
    return "{crm}:quarantine:" + msisdn


def identity(document_print: str) -> str:
    return "{crm}:identity:" + document_print


def name_words(name_print: str) -> str:
    """The customers whose name has the word of this keyed print (``names.py``)."""
    return "{crm}:name:" + name_print


def velocity(print_: str, day: int) -> str:
    """The applications (their ids) with this document or at this address on a day: an
    application screened again after an interrupted run counts once."""
    return f"{{crm}}:velocity:{print_}:{day}:apps"


def interactions(customer_id: str) -> str:
    return "{crm}:interactions:" + customer_id


def ticket(ticket_id: str) -> str:
    return "{crm}:ticket:" + ticket_id


def tickets(customer_id: str) -> str:
    return "{crm}:tickets:" + customer_id


def dispute(dispute_id: str) -> str:
    return "{crm}:dispute:" + dispute_id


def disputes(customer_id: str) -> str:
    return "{crm}:disputes:" + customer_id


def additions(day: str) -> str:
    """Gross additions on a day (ISO date), by customer type."""
    return "{crm}:stats:adds:" + day


def disconnections(day: str) -> str:
    """Disconnections on a day (ISO date), by customer type."""
    return "{crm}:stats:disc:" + day


def network_line(msisdn: str) -> str:
    """The provisioning worker's record of a line on the network."""
    return "{crm}:prov:line:" + msisdn
