"""``charging bill-run`` and ``charging dunning``: run them (``--as-of`` a later day) and
say what happened, as an operator reads it: the accounts due, the invoices issued, the
accounts skipped and why, or failed; each account dunned with its state, overdue amount
and actions. An account that failed makes the exit status 1 (the server's log says why).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from charging.cli import _print, open_channel
from charging.money import format_minor


def show_bill_run(report: Any) -> int:
    """The bill run's report as an operator reads it; 1 when an account failed."""
    skipped = sum(report.skipped.values())
    print(
        f"bill run as of {report.as_of}: {report.accounts} account{'s' if report.accounts != 1 else ''} due, "
        f"{report.issued} invoiced, {report.already} already invoiced, {skipped} skipped, {report.failed} failed"
    )
    for number in report.invoices:
        print(f"  issued {number}")
    for reason, count in sorted(report.skipped.items()):
        print(f"  skipped {count}: {reason}")
    for ba in report.failed_accounts:
        print(f"  failed {ba} (the server's log says why)")
    print(f"next period end: {report.next_due}" if report.next_due else "no further period to bill")
    if report.failed:
        print(f"error: {report.failed} account(s) could not be billed", file=sys.stderr)
        return 1
    return 0


def show_dunning(report: Any) -> int:
    """The dunning run's report as an operator reads it; 1 when an account failed."""
    taken = sum(report.actions.values())
    print(
        f"dunning as of {report.as_of}: {report.accounts} account{'s' if report.accounts != 1 else ''} "
        f"evaluated, {taken} action{'s' if taken != 1 else ''}, {report.failed} failed"
    )
    for o in report.outcomes:
        if o.failed:
            print(f"  {o.billing_account}  failed (the server's log says why)")
            continue
        later = f" (as of {o.as_of})" if o.as_of != report.as_of else ""
        done = "; ".join(o.actions) or "nothing new"
        print(f"  {o.billing_account}  {o.state}  overdue {format_minor(o.overdue_minor, '').rstrip()}{later}  {done}")
    if report.failed:
        print(f"error: {report.failed} account(s) could not be dunned", file=sys.stderr)
        return 1
    return 0


def cmd_bill_run(args: argparse.Namespace) -> int:
    from charging.v1 import billing_pb2, billing_pb2_grpc

    with open_channel(args) as channel:
        stub = billing_pb2_grpc.BillingStub(channel)
        report = stub.RunBilling(billing_pb2.RunBillingRequest(limit=args.limit, as_of=args.as_of))
        dunned = stub.RunDunning(billing_pb2.RunDunningRequest(as_of=args.as_of)) if args.dunning else None
    if args.json:
        for message in (report, dunned):
            if message is not None:
                _print(message)
        return 0
    status = show_bill_run(report)
    return max(status, show_dunning(dunned)) if dunned is not None else status


def cmd_dunning(args: argparse.Namespace) -> int:
    from charging.v1 import billing_pb2, billing_pb2_grpc

    with open_channel(args) as channel:
        report = billing_pb2_grpc.BillingStub(channel).RunDunning(billing_pb2.RunDunningRequest(as_of=args.as_of))
    if args.json:
        _print(report)
        return 0
    return show_dunning(report)
