"""``charging crm``: the CRM from the command line.

charging crm apply samples/crm/individual-postpaid.json    # SubmitApplication from a JSON file
charging crm order pp-anna-1 --wait 30                     # the order, once the network answered
charging crm line 491701234567 --wait-for active           # the line, once in that state
charging crm line 491701234567 --history                   # ... and every state it took, by which order
charging crm customer 1                                    # lines, units, orders, tickets, disputes
charging crm customers --state ACTIVE                      # customers by kind, state or number
charging crm bar|suspend|resume 491701234567               # orders on a line
charging crm terminate 491701234567 --reason MOVED_AWAY
charging crm change-plan 491701234567 --plan mobile-postpaid
charging crm new-line --customer 1 --msisdn 491701234568 --imsi 262011234567891 --plan mobile-postpaid
charging crm ticket open --customer 1 --topic NETWORK --summary "no signal at home"
charging crm ticket move T1 --state RESOLVED --note "antenna fixed"

An application file is the ``Application`` message of ``protos/charging/v1/crm.proto`` in
protobuf's JSON form (field names as in the proto); ``samples/crm/`` holds one for each
customer kind, described field by field in ``samples/crm/README.md``. A file that is not
such a message is refused naming the field; an application the CRM refuses prints the
order and names every bad field on stderr. Errors exit non-zero as for every command
(``charging/cli.py``).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import grpc
from google.protobuf import json_format

from charging.cli import CliError, _print, open_channel
from charging.money import MICROS_PER_MINOR, format_micros, format_minor
from provisioning.customer_care import TICKET_STATES, TICKET_TOPICS
from provisioning.lifecycle import LineState, TerminationReason

LINE_ORDERS = {"bar": "BAR_OUTGOING", "suspend": "SUSPEND", "resume": "RESUME"}
TERMINATION_REASONS = tuple(r.value for r in TerminationReason)
LINE_STATES = tuple(s.value for s in LineState)
POLL_S = 0.5


def _stub(channel: grpc.Channel) -> Any:
    from charging.v1 import crm_pb2_grpc

    return crm_pb2_grpc.CrmStub(channel)


def read_application(path: str, order_id: str) -> Any:
    """The ``Application`` in the JSON file ``path``; ``CliError`` naming the file and the
    field for anything that is not one."""
    from charging.v1 import crm_pb2

    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except UnicodeDecodeError:
        raise CliError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{path}: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise CliError(f"{path}: must be a JSON object (an Application)")
    application = crm_pb2.Application()
    unknown(doc, application.DESCRIPTOR, path)
    try:
        json_format.ParseDict(doc, application)
    except json_format.ParseError as exc:
        raise CliError(f"{path}: {' '.join(str(exc).split())}") from None
    if order_id:
        application.crm_order_id = order_id
    elif not application.crm_order_id:
        application.crm_order_id = f"cli-{uuid.uuid4().hex}"
    return application


def unknown(doc: dict[str, Any], descriptor: Any, path: str, where: str = "") -> None:
    """``CliError`` naming the first field of ``doc`` its message does not have, by its
    path in the proto's terms (``applicant.givenname``), with the fields it has."""
    for key, value in doc.items():
        field = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        name = f"{where}{key}"
        if field is None:
            known = ", ".join(f.name for f in descriptor.fields)
            raise CliError(f"{path}: {name}: unknown field (the fields here: {known})")
        if field.message_type is not None and isinstance(value, dict):
            unknown(value, field.message_type, path, f"{name}.")


def _status(order: Any) -> str:
    from charging.v1 import crm_pb2

    return str(crm_pb2.OrderStatus.Name(order.status)).removeprefix("ORDER_STATUS_")


def show_order(order: Any) -> None:
    facts = [f"order {order.crm_order_id}: {_status(order)}"]
    for label, value in (("customer", order.customer_id), ("account", order.account_id), ("line", order.msisdn)):
        if value:
            facts.append(f"{label} {value}")
    if order.credit_class:
        facts.append(f"credit class {order.credit_class}")
        facts.append(f"limit {format_micros(order.credit_limit_micros, '')}".rstrip())
        facts.append(f"deposit {format_micros(order.deposit_micros, '')}".rstrip())
    print("  ".join(facts))
    for step in order.steps:
        reasons = f" ({'; '.join(step.reasons)})" if step.reasons else ""
        print(f"  {step.step}: {step.outcome}{reasons}")


def refused_order(order: Any) -> int:
    """Exit status 1 with the order's problems, each naming its field, on one line."""
    problems = "; ".join(f"{p.field}: {p.message}" for p in order.problems)
    reasons = "; ".join(r for s in order.steps if s.outcome == "refused" for r in s.reasons)
    raise CliError(f"order {order.crm_order_id} rejected: {problems or reasons or 'see its steps'}")


def _answer(args: argparse.Namespace, order: Any) -> int:
    from charging.v1 import crm_pb2

    if args.json:
        _print(order)
    else:
        show_order(order)
    if order.status == crm_pb2.ORDER_STATUS_REJECTED:
        return refused_order(order)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    application = read_application(args.file, args.order_id)
    with open_channel(args) as channel:
        order = _stub(channel).SubmitApplication(application)
    return _answer(args, order)


def _wait(fetch: Any, done: Any, seconds: float, what: Any) -> Any:
    """Ask ``fetch`` until ``done`` holds of its answer, for at most ``seconds``; then
    ``CliError`` saying ``what(answer)``."""
    deadline = time.monotonic() + seconds
    while True:
        answer = fetch()
        if done(answer):
            return answer
        if time.monotonic() >= deadline:
            raise CliError(f"{what(answer)} after {seconds:g} s")
        time.sleep(POLL_S)


def cmd_order(args: argparse.Namespace) -> int:
    from charging.v1 import crm_pb2

    pending = (crm_pb2.ORDER_STATUS_SUBMITTED, crm_pb2.ORDER_STATUS_IN_PROGRESS)
    with open_channel(args) as channel:
        stub = _stub(channel)
        order = _wait(
            lambda: stub.GetOrder(crm_pb2.OrderRef(crm_order_id=args.order_id)),
            lambda o: not args.wait or o.status not in pending,
            args.wait,
            lambda o: f"order {args.order_id} still {_status(o)}",
        )
    return _answer(args, order)


def cmd_line(args: argparse.Namespace) -> int:
    from charging.v1 import crm_pb2

    with open_channel(args) as channel:
        stub = _stub(channel)
        line = _wait(
            lambda: stub.GetLine(crm_pb2.LineRef(msisdn=args.msisdn)),
            lambda x: not args.wait_for or x.state == args.wait_for,
            args.timeout,
            lambda x: f"line {args.msisdn} {x.state}, not {args.wait_for},",
        )
        changes = _line_history(stub, args.msisdn) if args.history else []
    if args.json:
        _print(line)
        for change in changes:
            _print(change)
    else:
        print(
            f"line {line.msisdn}: {line.state}  plan {line.plan_id}  customer {line.customer_id}  "
            f"account {line.account_id}" + (f"  unit {line.unit_id}" if line.unit_id else "")
        )
        for c in changes:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.at))
            why = c.cause + (f" ({c.reason})" if c.reason else "")
            print(f"  {when}  {c.state:<18} plan {c.plan_id}  order {c.crm_order_id or '-'}  {why}")
    return 0


def _line_history(stub: Any, msisdn: str) -> list[Any]:
    """Every change of the line, oldest first (``ListLineHistory``, page by page)."""
    from charging.v1 import crm_pb2

    changes: list[Any] = []
    token = ""
    while True:
        page = stub.ListLineHistory(crm_pb2.LineHistoryRequest(msisdn=msisdn, page_size=500, page_token=token))
        changes.extend(page.changes)
        token = page.next_page_token
        if not token:
            return changes


def cmd_line_order(args: argparse.Namespace) -> int:
    from charging.v1 import crm_pb2

    order = crm_pb2.LineOrder(
        crm_order_id=args.order_id or f"cli-{uuid.uuid4().hex}",
        msisdn=args.msisdn,
        kind=args.kind,
        plan_id=getattr(args, "plan", "") or "",
        termination_reason=getattr(args, "reason", "") or "",
    )
    if args.kind == "NEW_LINE":
        order.customer_id, order.org_unit_id, order.imsi = args.customer, args.unit or "", args.imsi or ""
        order.initial_balance_micros = args.balance
    with open_channel(args) as channel:
        answer = _stub(channel).SubmitOrder(order)
    return _answer(args, answer)


def cmd_customer(args: argparse.Namespace) -> int:
    from charging.v1 import crm_pb2

    with open_channel(args) as channel:
        stub = _stub(channel)
        customer = stub.GetCustomer(crm_pb2.CustomerRef(customer_id=args.customer_id))
        orders, token = [], ""
        while True:
            page = stub.ListCustomerOrders(
                crm_pb2.CustomerPageRequest(customer_id=customer.id, page_size=500, page_token=token)
            )
            orders += list(page.orders)
            token = page.next_page_token
            if not token:
                break
        records = stub.GetCustomerRecords(crm_pb2.CustomerRef(customer_id=customer.id))
    if args.json:
        for message in (customer, crm_pb2.OrderPage(orders=orders), records):
            _print(message)
        return 0
    billing = "" if customer.kind == "CORPORATE" else f"  billing account C{customer.id}"
    print(f"customer {customer.id}  {customer.kind}{billing}")
    if customer.kind == "CORPORATE":
        print("units:")
        for u in customer.units:
            pays = f"billing account U{u.id}" if u.paying_unit_id == u.id else f"paid by unit {u.paying_unit_id}"
            parent = f"  under {u.parent_id}" if u.parent_id else ""
            print(f"  {u.id}  {u.name}{parent}  {pays}")
    print("lines:" if customer.lines else "lines: none")
    for line in customer.lines:
        unit = f"  unit {line.unit_id}" if line.unit_id else ""
        print(f"  {line.msisdn}  {line.state}  {line.plan_id}  account {line.account_id}{unit}")
    print("orders:" if orders else "orders: none")
    for o in orders:
        print(f"  {o.crm_order_id}  {_status(o)}" + (f"  line {o.msisdn}" if o.msisdn else ""))
    print("tickets:" if records.tickets else "tickets: none")
    for t in records.tickets:
        about = "".join(f"  {k} {v}" for k, v in (("line", t.line), ("invoice", t.invoice)) if v)
        print(f"  {t.id}  {t.topic}  {t.state}  {t.summary!r}{about}")
    print("disputes:" if records.disputes else "disputes: none")
    for d in records.disputes:
        amount = format_minor(d.amount_minor or d.amount_micros // MICROS_PER_MINOR, "").rstrip()
        print(
            f"  {d.id}  {d.invoice}  {amount}  {d.state}  {d.reason!r}" + (f"  {d.resolution}" if d.resolution else "")
        )
    if records.interactions:
        print("interactions:")
        for i in records.interactions:
            print(f"  {i.id}  {i.channel}  {i.note!r}")
    return 0


def cmd_customers(args: argparse.Namespace) -> int:
    from charging.v1 import crm_pb2

    query = crm_pb2.CustomerQuery(
        kind=args.kind or "", state=args.state or "", msisdn=args.msisdn or "", name=args.name or ""
    )
    with open_channel(args) as channel:
        stub = _stub(channel)
        while True:
            page = stub.ListCustomers(query)
            for c in page.customers:
                credit = f"  credit class {c.credit_class}" if c.credit_class else ""
                print(f"{c.id}  {c.kind}  {c.state}  {c.country} {c.postal_code}{credit}")
            if not page.next_page_token:
                return 0
            query.page_token = page.next_page_token


def show_ticket(args: argparse.Namespace, ticket: Any) -> int:
    if args.json:
        _print(ticket)
        return 0
    print(f"ticket {ticket.id}: {ticket.state}  {ticket.topic}  customer {ticket.customer_id}  {ticket.summary!r}")
    for h in ticket.history:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(h.at))
        print(f"  {stamp} UTC  {h.state}" + (f"  {h.note!r}" if h.note else ""))
    return 0


def cmd_ticket_open(args: argparse.Namespace) -> int:
    from charging.v1 import crm_pb2

    ticket = crm_pb2.Ticket(
        customer_id=args.customer,
        topic=args.topic,
        summary=args.summary,
        line=args.line or "",
        invoice=args.invoice or "",
    )
    with open_channel(args) as channel:
        return show_ticket(args, _stub(channel).OpenTicket(ticket))


def cmd_ticket_move(args: argparse.Namespace) -> int:
    from charging.v1 import crm_pb2

    move = crm_pb2.TicketMove(ticket_id=args.ticket_id, state=args.state, note=args.note or "")
    with open_channel(args) as channel:
        return show_ticket(args, _stub(channel).MoveTicket(move))


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be from 0 to 3600 seconds: {text!r}")
    return value


def add_crm(sub: Any, amount: Any) -> None:
    """The ``crm`` command and its subcommands, on the ``charging`` parser's ``sub``;
    ``amount`` parses a decimal amount into micros."""
    crm = sub.add_parser("crm", help="the CRM: applications, customers, line orders, tickets")
    crm_sub = crm.add_subparsers(dest="crm_command", required=True, metavar="COMMAND")

    def command(name: str, fn: Any, help_text: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = crm_sub.add_parser(name, help=help_text)
        sp.add_argument("--json", action="store_true", help="print the answers as JSON")
        sp.set_defaults(fn=fn)
        return sp

    sp = command("apply", cmd_apply, "submit an application from a JSON file (samples/crm/)")
    sp.add_argument("file")
    sp.add_argument("--order-id", default="", help="the CRM order id (default: the file's, else a new one)")
    sp = command("order", cmd_order, "show an order")
    sp.add_argument("order_id")
    sp.add_argument("--wait", type=seconds, default=0, help="wait up to this many seconds while it is in progress")
    sp = command("line", cmd_line, "show a line")
    sp.add_argument("msisdn")
    sp.add_argument("--wait-for", choices=LINE_STATES, help="wait until the line is in this state")
    sp.add_argument("--timeout", type=seconds, default=30, help="seconds --wait-for waits (default 30)")
    sp.add_argument("--history", action="store_true", help="and every state it took: when, why, by which order")
    sp = command("customer", cmd_customer, "show a customer with its lines, orders, tickets and disputes")
    sp.add_argument("customer_id")
    sp = command("customers", cmd_customers, "list customers")
    sp.add_argument("--kind", choices=("INDIVIDUAL", "CORPORATE"))
    sp.add_argument("--state", choices=("PENDING", "ACTIVE", "TERMINATED"))
    sp.add_argument("--msisdn", help="the customer with this line")
    sp.add_argument("--name", help="customers with every word of this in their name (whole words)")

    def line_order(name: str, kind: str, help_text: str) -> argparse.ArgumentParser:
        sp = command(name, cmd_line_order, help_text)
        sp.add_argument("msisdn")
        sp.add_argument("--order-id", default="", help="the CRM order id (default: a new one)")
        sp.set_defaults(kind=kind)
        return sp

    for name, kind in LINE_ORDERS.items():
        line_order(name, kind, f"order {kind} on a line")
    sp = line_order("terminate", "TERMINATE", "terminate a line")
    sp.add_argument("--reason", required=True, choices=TERMINATION_REASONS)
    sp = line_order("change-plan", "CHANGE_PRODUCT", "move a line to another plan")
    sp.add_argument("--plan", required=True)
    sp = command("new-line", cmd_line_order, "a further line for a customer")
    sp.set_defaults(kind="NEW_LINE")
    sp.add_argument("--customer", required=True)
    sp.add_argument("--msisdn", required=True)
    sp.add_argument("--imsi", default="")
    sp.add_argument("--plan", required=True)
    sp.add_argument("--unit", help="corporate: the organisation unit (default: the company)")
    sp.add_argument("--balance", type=amount, default=0, help="prepaid: initial balance, e.g. 10.50")
    sp.add_argument("--order-id", default="", help="the CRM order id (default: a new one)")

    ticket = crm_sub.add_parser("ticket", help="trouble tickets: open, move")
    ticket_sub = ticket.add_subparsers(dest="ticket_command", required=True, metavar="open|move")
    sp = ticket_sub.add_parser("open", help="open a ticket")
    sp.add_argument("--customer", required=True)
    sp.add_argument("--topic", required=True, choices=TICKET_TOPICS)
    sp.add_argument("--summary", required=True)
    sp.add_argument("--line", help="the line (MSISDN) it is about")
    sp.add_argument("--invoice", help="the invoice it is about")
    sp.add_argument("--json", action="store_true", help="print the answer as JSON")
    sp.set_defaults(fn=cmd_ticket_open)
    sp = ticket_sub.add_parser("move", help="move a ticket to another state")
    sp.add_argument("ticket_id")
    sp.add_argument("--state", required=True, choices=TICKET_STATES)
    sp.add_argument("--note")
    sp.add_argument("--json", action="store_true", help="print the answer as JSON")
    sp.set_defaults(fn=cmd_ticket_move)
