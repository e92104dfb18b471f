"""The ``charging`` command: run the server, or talk to one as a client.

charging serve
charging create-subscriber --msisdn 491700000001 --balance 10
charging session --msisdn 491700000001 --rating-group 10 --used 45 --updates 2
charging event --msisdn 491700000001 --action debit --rating-group 20 --units 1
charging topup --msisdn 491700000001 --amount 5 --channel retail --key r-1
charging balance --msisdn 491700000001
charging bill-run --dunning
charging bill-run --as-of 2026-12-28          # bill as of a later day (dunning --as-of too)
charging dunning --as-of 2027-01-31
charging invoices --billing-account C1
charging crm apply samples/crm/individual-postpaid.json   # and more: charging/crm_cli.py
charging pay --billing-account C1 --amount 29.75 --reference bank-123
charging rotate-data-key
charging certs --dir certs                  # a development CA, server and role certificates
charging tokens create --name webshop --role channel --channel APP

Against a secured server, the client presents credentials from flags or the environment:
``--tls-ca`` (CHARGING_CLIENT_TLS_CA), ``--tls-cert`` / ``--tls-key``
(CHARGING_CLIENT_TLS_CERT / _KEY), ``--token`` (CHARGING_TOKEN, sent only over TLS).

Every error is one line on stderr and a non-zero exit status: 2 for a bad command line
or a call the server refused with a gRPC status, 1 for an answer that refuses the request
(a result code other than success) or a file that cannot be read or written.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

# gRPC's C core logs every failed TLS handshake (a plaintext client, an unknown
# certificate) at INFO on stderr, unthrottled and not as JSON: anyone who can reach the
# port could flood the log. It reads GRPC_VERBOSITY once, before grpc is first imported;
# an operator who sets it keeps their choice.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
from google.protobuf.json_format import MessageToDict

from charging.codes import ResultCode
from charging.money import (
    MAX_AMOUNT,
    MAX_UNITS,
    MICROS_PER_UNIT,
    exact_minor,
    format_micros,
    format_minor,
    parse_amount,
)


class CliError(Exception):
    """A mistake the user hears about in one line on stderr, exit status 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not argparse's usage block."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def amount(text: str) -> int:
    """A plain decimal amount of currency, in micros."""
    try:
        micros = parse_amount(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if abs(micros) > MAX_AMOUNT:
        raise argparse.ArgumentTypeError(f"at most {MAX_AMOUNT // MICROS_PER_UNIT} in absolute value: {text!r}")
    return micros


def cents(text: str) -> int:
    """A plain decimal amount with at most two decimals, in minor units (cents)."""
    try:
        return exact_minor(amount(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"more than two decimals: {text!r}") from None


def bounded(top: int) -> Callable[[str], int]:
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not 0 <= value <= top:
            raise argparse.ArgumentTypeError(f"must be from 0 to {top}: {text!r}")
        return value

    return count


units_count = bounded(MAX_UNITS)
rating_group = bounded(2**32 - 1)


def base64_bytes(text: str) -> bytes:
    """Bytes as answers print them (base64, the protobuf JSON mapping)."""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise argparse.ArgumentTypeError(f"not base64: {text!r}") from None


def refused(code: int) -> int:
    """Say on stderr that the answer refused the request; the exit status."""
    try:
        name = ResultCode(code).name
    except ValueError:
        name = "(unknown)"
    print(f"error: result code {code} {name}", file=sys.stderr)
    return 1


def _print(message: Any) -> None:
    print(json.dumps(MessageToDict(message, preserving_proto_field_name=True), indent=None))


def _subscriber(args: argparse.Namespace) -> Any:
    from charging.v1 import common_pb2

    return common_pb2.SubscriberId(msisdn=args.msisdn) if args.msisdn else common_pb2.SubscriberId(imsi=args.imsi)


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to ``--target``: plaintext, or TLS when any TLS flag or a token is given
    (a token is never sent in clear)."""
    if not (args.tls_ca or args.tls_cert or args.tls_key or args.token):
        return grpc.insecure_channel(args.target)
    from charging.security.tls import channel_credentials, token_credentials

    try:
        creds = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.token:
        creds = grpc.composite_channel_credentials(creds, token_credentials(args.token))
    return grpc.secure_channel(args.target, creds)


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the server answers SERVING (the Docker health check)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with open_channel(args) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout).status
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_certs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from charging.security.certs import write_dev_set

    written = write_dev_set(Path(args.dir), hosts=args.host or ["localhost"], days=args.days)
    print(f"wrote {', '.join(written)} in {args.dir} (a development CA: not for production)")
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    """Create, list or revoke bearer tokens, straight in Redis (CHARGING_REDIS_URL, or the
    embedded Redis of CHARGING_REDIS_DIR, which needs its server running)."""
    import asyncio

    from charging import store
    from charging.embedded_redis import with_password
    from charging.errors import ChargingError
    from charging.security.tokens import TokenStore
    from charging.settings import Settings

    settings = Settings.from_env(os.environ)
    url = with_password(settings.redis_url or f"unix://{(settings.redis_dir / 'redis.sock').resolve()}")

    if args.action != "list" and not args.name:
        raise CliError(f"tokens {args.action} needs --name")

    async def run() -> int:
        client = store.connect(url, max_connections=2, tls=settings.redis_tls())
        tokens = TokenStore(client)
        try:
            if args.action == "create":
                roles, channels = tuple(args.role or ()), tuple(c.upper() for c in args.channel or ())
                token = await tokens.create(args.name, roles, channels, int(time.time()))
                print(token)
                print(f"token {args.name} created; it is shown only now", file=sys.stderr)
            elif args.action == "list":
                for t in await tokens.list():
                    created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(t.created_s))
                    print(f"{t.name}  roles={','.join(t.roles)}  channels={','.join(t.channels) or '-'}  {created} UTC")
            else:
                await tokens.revoke(args.name)
                print(f"token {args.name} revoked")
        except ChargingError as exc:
            raise CliError(str(exc)) from None
        finally:
            await client.aclose()
        return 0

    return asyncio.run(run())


def cmd_serve(args: argparse.Namespace) -> int:
    import dataclasses

    import uvloop

    from charging import logs
    from charging.server import serve
    from charging.settings import Settings
    from charging.supervisor import supervise, worker_count

    settings = Settings.from_env(os.environ)
    if args.workers is not None:
        settings = dataclasses.replace(settings, workers=args.workers)
        settings.validate()
    logs.configure(settings.log_level)
    workers = worker_count(settings)
    if (workers > 1 or settings.grpc_door) and not settings.worker_of:  # the door needs a supervisor
        uvloop.run(supervise(settings, workers, os.environ))
    else:
        uvloop.run(serve(settings))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import uvloop

    from charging import logs
    from charging.server import provision
    from charging.settings import Settings

    settings = Settings.from_env(os.environ)
    logs.configure(settings.log_level)
    uvloop.run(provision(settings))
    return 0


def cmd_rotate_data_key(args: argparse.Namespace) -> int:
    """Re-seal personal data under the newest key, then rewrite the AOF. Talks to Redis
    itself (CHARGING_REDIS_URL, else the embedded Redis of CHARGING_REDIS_DIR)."""
    import asyncio

    from redis.exceptions import RedisError

    from charging import store
    from charging.database import open_pool
    from charging.embedded_postgres import command_database_url
    from charging.embedded_redis import with_password
    from charging.errors import InvalidRequest, StartupError
    from charging.settings import Settings
    from provisioning.names import NameIndex, crm_salt
    from provisioning.rotation import Rotation
    from provisioning.sealing import Unreadable, load_sealer

    settings = Settings.from_env(os.environ)
    url = with_password(settings.redis_url or f"unix://{settings.redis_dir.resolve() / 'redis.sock'}")

    async def rotate() -> tuple[dict[str, int], int]:
        sealer = load_sealer(settings, generate=False)
        pool = await open_pool(command_database_url(settings), 1)
        client = store.connect(url, max_connections=2, tls=settings.redis_tls(), timeout_s=args.timeout)
        try:
            # the name index for customers stored before it existed (idempotent)
            salt = await crm_salt(client, settings.crm_salt)
            names = await NameIndex(client, salt).backfill(sealer) if salt else 0
            return (await Rotation(client, sealer, pool).run(rewrite_timeout_s=args.timeout)).as_dict(), names
        finally:
            await client.aclose()
            await pool.close()

    try:
        done, names = asyncio.run(rotate())
    except (StartupError, RuntimeError, Unreadable, InvalidRequest) as exc:
        raise CliError(str(exc)) from None
    except RedisError as exc:
        raise CliError(f"redis: {exc}") from None
    print(json.dumps({"rotated": done, "names_indexed": names, "aof": "rewritten"}))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    import asyncio

    from charging import logs
    from charging.migrations import migrate
    from charging.settings import Settings

    settings = Settings.from_env(os.environ)
    logs.configure(settings.log_level)
    try:
        revision = asyncio.run(migrate(settings))
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    print(json.dumps({"revision": revision}))
    return 0


def cmd_cdrs(args: argparse.Namespace) -> int:
    """Usage records from PostgreSQL (charging/cdr_export.py)."""
    import asyncio

    from charging import cdr_export
    from charging.errors import InvalidRequest
    from charging.settings import Settings

    try:
        q = cdr_export.query(args.start, args.end, args.msisdn or "", args.account or "", args.export, args.limit)
        asyncio.run(cdr_export.write(Settings.from_env(os.environ), q, sys.stdout))
    except InvalidRequest as exc:
        raise CliError(str(exc)) from None
    return 0


def cmd_create_subscriber(args: argparse.Namespace) -> int:
    from charging.v1 import admin_pb2, admin_pb2_grpc

    with open_channel(args) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        _print(
            stub.CreateSubscriber(
                admin_pb2.CreateSubscriberRequest(
                    msisdn=args.msisdn,
                    imsi=args.imsi or "",
                    plan_id=args.plan,
                    initial_balance_micros=args.balance,
                )
            )
        )
    return 0


def cmd_session(args: argparse.Namespace) -> int:
    from charging.v1 import charging_pb2, charging_pb2_grpc

    session_id = args.session_id or f"cli;{uuid.uuid4().hex}"
    with open_channel(args) as channel:
        stub = charging_pb2_grpc.ChargingStub(channel)

        def send(kind: int, number: int, used: int) -> int:
            req = charging_pb2.SessionRequest(
                session_id=session_id,
                request_type=kind,  # type: ignore[arg-type]
                request_number=number,
                subscriber=_subscriber(args),
                called_party=args.called or "",
                visited_network=args.visited_network or "",
            )
            rg = req.rating_groups.add(rating_group=args.rating_group)
            if kind != charging_pb2.REQUEST_TYPE_TERMINATE:
                rg.requested.SetInParent()
            if kind != charging_pb2.REQUEST_TYPE_INITIAL:
                setattr(rg.used, args.unit, used)
            answer = stub.ChargeSession(req)
            _print(answer)
            return int(answer.result_code)

        code = send(charging_pb2.REQUEST_TYPE_INITIAL, 0, 0)
        if code == ResultCode.CREDIT_CONTROL_NOT_APPLICABLE:
            return 0  # not credit-controlled: no session to go on with
        if code != ResultCode.SUCCESS:
            return refused(code)  # the INITIAL opened nothing
        number, used_last, status = 0, 0, 0
        try:
            for number in range(1, args.updates + 1):
                code = send(charging_pb2.REQUEST_TYPE_UPDATE, number, args.used)
                if code != ResultCode.SUCCESS:
                    status = refused(code)
                    break
            else:
                used_last = args.used
        finally:
            # Whatever stopped the session (a refused UPDATE, an error, Ctrl-C), TERMINATE
            # releases what it holds now rather than leaving it reserved until supervision
            # closes it. Units are reported only when every UPDATE went through.
            code = send(charging_pb2.REQUEST_TYPE_TERMINATE, number + 1, used_last)
        if code != ResultCode.SUCCESS and not status:
            status = refused(code)
        return status


def cmd_event(args: argparse.Namespace) -> int:
    from charging.v1 import charging_pb2, charging_pb2_grpc

    actions = {
        "debit": charging_pb2.REQUESTED_ACTION_DIRECT_DEBITING,
        "refund": charging_pb2.REQUESTED_ACTION_REFUND_ACCOUNT,
        "check": charging_pb2.REQUESTED_ACTION_CHECK_BALANCE,
        "price": charging_pb2.REQUESTED_ACTION_PRICE_ENQUIRY,
    }
    req = charging_pb2.EventRequest(
        event_id=args.event_id or f"cli-{uuid.uuid4().hex}",
        action=actions[args.action],
        subscriber=_subscriber(args),
        rating_group=args.rating_group,
        refund_information=args.refund_token or b"",
    )
    setattr(req.requested, args.unit, args.units)
    with open_channel(args) as channel:
        answer = charging_pb2_grpc.ChargingStub(channel).ChargeEvent(req)
    _print(answer)
    if answer.result_code not in (ResultCode.SUCCESS, ResultCode.CREDIT_CONTROL_NOT_APPLICABLE):
        return refused(answer.result_code)
    return 0


def cmd_topup(args: argparse.Namespace) -> int:
    from charging.v1 import topup_pb2, topup_pb2_grpc

    req = topup_pb2.RechargeRequest(
        subscriber=_subscriber(args),
        amount_micros=args.amount,
        channel=topup_pb2.Channel.Value("CHANNEL_" + args.channel.upper()),
        idempotency_key=args.key or f"cli-{uuid.uuid4().hex}",
    )
    with open_channel(args) as channel:
        _print(topup_pb2_grpc.TopUpStub(channel).Recharge(req))
    return 0


def cmd_balance(args: argparse.Namespace) -> int:
    from charging.v1 import topup_pb2, topup_pb2_grpc

    with open_channel(args) as channel:
        b = topup_pb2_grpc.TopUpStub(channel).GetBalance(topup_pb2.BalanceRequest(subscriber=_subscriber(args)))
    print(
        f"balance {format_micros(b.balance_micros, b.currency)}  "
        f"reserved {format_micros(b.reserved_micros, b.currency)}  "
        f"available {format_micros(b.available_micros, b.currency)}"
    )
    units = {1: "s", 2: "bytes", 3: "units"}
    for k in b.buckets:
        print(
            f"bucket {k.id}: {k.amount} of {k.initial} {units.get(k.unit, '')} left, {k.reserved} reserved, "
            f"expires {time.strftime('%Y-%m-%d %H:%M', time.gmtime(k.expiry_time))} UTC"
        )
    return 0


def cmd_buy_bundle(args: argparse.Namespace) -> int:
    from charging.v1 import topup_pb2, topup_pb2_grpc

    req = topup_pb2.BuyBundleRequest(
        subscriber=_subscriber(args),
        bundle_id=args.bundle,
        channel=topup_pb2.Channel.Value("CHANNEL_" + args.channel.upper()),
        idempotency_key=args.key or f"cli-{uuid.uuid4().hex}",
    )
    with open_channel(args) as channel:
        answer = topup_pb2_grpc.TopUpStub(channel).BuyBundle(req)
    _print(answer)
    if answer.result != topup_pb2.PURCHASE_RESULT_PURCHASED:
        print(f"error: not bought: {topup_pb2.PurchaseResult.Name(answer.result)}", file=sys.stderr)
        return 1
    return 0


def cmd_load_catalog(args: argparse.Namespace) -> int:
    from charging.v1 import admin_pb2, admin_pb2_grpc

    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise CliError(f"{args.file}: not UTF-8 text") from None
    with open_channel(args) as channel:
        _print(admin_pb2_grpc.AdminStub(channel).LoadCatalog(admin_pb2.CatalogDocument(json=text)))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """The audit trail of an account, an actor or a time range, oldest first, page by page
    (Admin.ListAuditEntries: role operator), one JSON object a line."""
    from google.protobuf.json_format import MessageToDict

    from charging.v1 import admin_pb2, admin_pb2_grpc

    subject = f"account:{args.account}" if args.account else args.subject
    with open_channel(args) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        token = None
        while token != "":
            query = admin_pb2.AuditQuery(subject=subject, actor=args.actor, to=args.to, page_token=token or "")
            setattr(query, "from", args.start)
            page = stub.ListAuditEntries(query)
            token = page.next_page_token
            for entry in page.entries:
                row = MessageToDict(entry, preserving_proto_field_name=True)
                row["details"] = json.loads(row.pop("details_json", "{}"))
                print(json.dumps(row, sort_keys=True))
    return 0


def cmd_invoices(args: argparse.Namespace) -> int:
    from charging.v1 import billing_pb2, billing_pb2_grpc

    with open_channel(args) as channel:
        stub = billing_pb2_grpc.BillingStub(channel)
        if args.pdf:
            pdf = stub.RenderInvoice(billing_pb2.RenderRequest(number=args.pdf, format=billing_pb2.RENDER_FORMAT_PDF))
            with open(f"{args.pdf}.pdf", "wb") as f:
                f.write(pdf.content)
            print(f"wrote {args.pdf}.pdf")
            return 0
        if not args.billing_account:
            raise CliError("invoices needs --billing-account (or --pdf NUMBER)")
        account = billing_pb2.BillingAccountId(billing_account=args.billing_account)
        try:
            # ListInvoices answers an empty list for an account that does not exist.
            stub.GetBillingAccount(account)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise CliError(f"no billing account {args.billing_account}") from None
            raise
        token, shown = None, 0
        while token != "":  # page by page
            listing = stub.ListInvoices(
                billing_pb2.BillingAccountId(billing_account=args.billing_account, page_token=token or "")
            )
            token = listing.next_page_token
            for inv in listing.invoices:
                shown += 1
                total, still_open = (
                    format_minor(inv.total_minor, inv.currency),
                    format_minor(inv.open_minor, inv.currency),
                )
                print(
                    f"{inv.number}  {inv.period_start}..{inv.period_end}  total {total}  open {still_open}"
                    f"  due {inv.due}  {inv.status}  {inv.delivery}"
                )
        if not shown:
            print(f"no invoices yet for {args.billing_account}")
    return 0


def cmd_pay(args: argparse.Namespace) -> int:
    from charging.v1 import billing_pb2, billing_pb2_grpc

    req = billing_pb2.PaymentRequest(
        billing_account=args.billing_account,
        amount_minor=args.amount,
        channel=args.channel.upper(),
        reference=args.reference,
    )
    with open_channel(args) as channel:
        _print(billing_pb2_grpc.BillingStub(channel).RecordPayment(req))
    return 0


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="charging", description="Real-time online charging system")
    p.add_argument("--target", default=os.environ.get("CHARGING_TARGET", "127.0.0.1:50051"), help="server host:port")
    env = os.environ.get
    p.add_argument("--tls-ca", default=env("CHARGING_CLIENT_TLS_CA", ""), help="CA certificate of the server (PEM)")
    p.add_argument("--tls-cert", default=env("CHARGING_CLIENT_TLS_CERT", ""), help="client certificate (PEM)")
    p.add_argument("--tls-key", default=env("CHARGING_CLIENT_TLS_KEY", ""), help="client key (PEM)")
    p.add_argument("--token", default=env("CHARGING_TOKEN", ""), help="bearer token (sent over TLS only)")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("serve", help="run the server (settings from CHARGING_* variables)")
    sp.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes serving one address (default CHARGING_WORKERS; 0: one per core)",
    )
    sp.set_defaults(fn=cmd_serve)
    sub.add_parser("worker", help="run the provisioning worker as its own process").set_defaults(fn=cmd_worker)
    sub.add_parser(
        "migrate", help="bring the database schema up to date (CHARGING_DATABASE_URL, else the embedded one)"
    ).set_defaults(fn=cmd_migrate)

    sp = sub.add_parser("health", help="exit 0 when the server is SERVING")
    sp.add_argument("--timeout", type=float, default=2.0)
    sp.set_defaults(fn=cmd_health)
    sp = sub.add_parser("certs", help="write a development CA, server and per-role certificates and a policy")
    sp.add_argument("--dir", default="certs")
    sp.add_argument("--host", action="append", help="a DNS name or IP of the server (repeatable; default localhost)")
    sp.add_argument("--days", type=bounded(3650), default=365)
    sp.set_defaults(fn=cmd_certs)
    sp = sub.add_parser("tokens", help="bearer tokens: create, list, revoke")
    sp.add_argument("action", choices=("create", "list", "revoke"))
    sp.add_argument("--name")
    sp.add_argument("--role", action="append", choices=("network", "channel", "crm", "billing", "operator", "monitor"))
    sp.add_argument("--channel", action="append", help="a TopUp channel of the channel role (repeatable)")
    sp.set_defaults(fn=cmd_tokens)
    # The console's staff accounts (console/staff_cli.py).
    from console import staff_cli

    sp = sub.add_parser("staff", help="console staff accounts: add, disable, list")
    staff_cli.add_arguments(sp)
    sp.set_defaults(fn=cmd_staff)

    def who(sp: argparse.ArgumentParser) -> None:
        g = sp.add_mutually_exclusive_group(required=True)
        g.add_argument("--msisdn")
        g.add_argument("--imsi")

    sp = sub.add_parser("create-subscriber", help="create a subscriber with an account")
    sp.add_argument("--msisdn", required=True)
    sp.add_argument("--imsi")
    sp.add_argument("--plan", default="default", help="a plan of the catalog")
    sp.add_argument("--balance", type=amount, default=0, help="initial balance in currency units, e.g. 10.50")
    sp.set_defaults(fn=cmd_create_subscriber)

    units = ("time_s", "total_octets", "service_specific_units", "money_micros")
    sp = sub.add_parser("session", help="run INITIAL, UPDATEs and TERMINATE for one rating group")
    who(sp)
    sp.add_argument("--session-id")
    sp.add_argument("--rating-group", type=rating_group, default=10)
    sp.add_argument("--unit", choices=units, default="time_s")
    sp.add_argument("--used", type=units_count, default=60, help="units used between two requests")
    sp.add_argument("--updates", type=bounded(1000), default=1)
    sp.add_argument("--called", help="called number (E.164 digits) for voice, SMS and MMS")
    sp.add_argument("--visited-network", help="MCC+MNC of the serving network (roaming)")
    sp.set_defaults(fn=cmd_session)

    sp = sub.add_parser("event", help="event charging: debit, refund, check or price")
    who(sp)
    sp.add_argument("--action", choices=("debit", "refund", "check", "price"), default="debit")
    sp.add_argument("--event-id")
    sp.add_argument("--rating-group", type=rating_group, default=20)
    sp.add_argument("--unit", choices=units, default="service_specific_units")
    sp.add_argument("--units", type=units_count, default=1)
    sp.add_argument(
        "--refund-token", type=base64_bytes, help="refund: the refund_information of the debit's answer, as printed"
    )
    sp.set_defaults(fn=cmd_event)

    sp = sub.add_parser("topup", help="recharge a balance")
    who(sp)
    sp.add_argument("--amount", type=amount, required=True, help="currency units, e.g. 5 or 2.50")
    sp.add_argument("--channel", default="retail", choices=("retail", "bank", "voucher", "app", "ussd", "operator"))
    sp.add_argument("--key", help="idempotency key (default: a new one)")
    sp.set_defaults(fn=cmd_topup)

    sp = sub.add_parser("buy-bundle", help="buy a bundle of the catalog with the money balance")
    who(sp)
    sp.add_argument("--bundle", required=True)
    sp.add_argument("--channel", default="app", choices=("retail", "bank", "voucher", "app", "ussd", "operator"))
    sp.add_argument("--key", help="idempotency key (default: a new one)")
    sp.set_defaults(fn=cmd_buy_bundle)

    sp = sub.add_parser("balance", help="show a balance and its buckets")
    who(sp)
    sp.set_defaults(fn=cmd_balance)

    sp = sub.add_parser("load-catalog", help="replace the running catalog with a JSON document")
    sp.add_argument("file")
    sp.set_defaults(fn=cmd_load_catalog)

    from charging.billing_cli import cmd_bill_run, cmd_dunning

    sp = sub.add_parser("bill-run", help="bill every account whose period ended (safe to run again)")
    sp.add_argument("--limit", type=bounded(2**31 - 1), default=0, help="at most this many accounts (0: all)")
    sp.add_argument("--dunning", action="store_true", help="then walk the dunning ladder")
    sp.add_argument("--as-of", default="", metavar="YYYY-MM-DD", help="bill as of this day (today or later)")
    sp.add_argument("--json", action="store_true", help="print the reports as JSON")
    sp.set_defaults(fn=cmd_bill_run)
    sp = sub.add_parser("dunning", help="walk the dunning ladder (safe to run again)")
    sp.add_argument("--as-of", default="", metavar="YYYY-MM-DD", help="as of this day (today or later)")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.set_defaults(fn=cmd_dunning)
    sp = sub.add_parser("audit", help="the audit trail of an account, an actor or a time range (JSON lines)")
    sp.add_argument("--account", default="", help="a charging account id (subject account:<id>)")
    sp.add_argument("--subject", default="", help="any subject: a billing account id, catalog")
    sp.add_argument("--actor", default="", help="who: local, token:<name>, a certificate name, staff:<name>")
    sp.add_argument("--from", dest="start", default="", help="RFC 3339 instant with an offset")
    sp.add_argument("--to", default="", help="RFC 3339 instant with an offset (exclusive)")
    sp.set_defaults(fn=cmd_audit)
    sp = sub.add_parser("invoices", help="list a billing account's invoices, or save one as PDF")
    sp.add_argument("--billing-account", default="")
    sp.add_argument("--pdf", default="", help="an invoice number: write <number>.pdf")
    sp.set_defaults(fn=cmd_invoices)
    sp = sub.add_parser("pay", help="record a payment on a billing account")
    sp.add_argument("--billing-account", required=True)
    sp.add_argument("--amount", type=cents, required=True, help="decimal amount, e.g. 29.75")
    sp.add_argument("--channel", default="BANK_TRANSFER")
    sp.add_argument("--reference", required=True)
    sp.set_defaults(fn=cmd_pay)

    sp = sub.add_parser("cdrs", help="usage records of a line or account from the database; --export a period (CSV)")
    sp.add_argument("--msisdn", help="the line's MSISDN")
    sp.add_argument("--account", help="the charging account id")
    sp.add_argument("--from", dest="start", required=True, help="ISO 8601 date or time (UTC unless given), included")
    sp.add_argument("--to", dest="end", required=True, help="ISO 8601 date or time, excluded")
    sp.add_argument("--export", action="store_true", help="CSV with a header row (3GPP TS 32.298 field names)")
    sp.add_argument("--limit", type=int, default=0, help="at most this many records (0: all)")
    sp.set_defaults(fn=cmd_cdrs)

    sp = sub.add_parser(
        "rotate-data-key", help="re-encrypt personal data with the newest data key, then rewrite Redis's AOF"
    )
    sp.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for Redis and the AOF rewrite")
    sp.set_defaults(fn=cmd_rotate_data_key)

    from charging.crm_cli import add_crm

    add_crm(sub, amount)
    from charging.history_cli import add_history

    add_history(sub)  # catalog and coverage versions from the database
    return p


def cmd_staff(args: argparse.Namespace) -> int:
    from console.staff_cli import StaffCliError, run

    try:
        return run(args)
    except StaffCliError as exc:
        raise CliError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {one_line(exc.details() or '')}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    # Run as ``python -m charging.cli``, this file is ``__main__``; commands in other
    # modules (``crm_cli``, ``billing_cli``) import ``charging.cli``. Go through that one module so there
    # is one CliError class, the one ``main`` catches.
    from charging.cli import main as cli_main

    sys.exit(cli_main())
