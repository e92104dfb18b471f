"""``charging staff add|disable|list``: staff accounts of the console, straight in Redis
(CHARGING_REDIS_URL, or the embedded Redis of CHARGING_REDIS_DIR, whose server must be
running). The password is read from stdin (``--password-stdin``) or asked for without
echo; it is never printed, logged nor stored in clear."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import time

from charging import store
from charging.embedded_redis import with_password
from charging.errors import ChargingError
from charging.settings import Settings
from console.access import STAFF_ROLES
from console.staff import StaffBook


class StaffCliError(Exception):
    pass


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("action", choices=("add", "disable", "list"))
    sp.add_argument("--name")
    sp.add_argument("--role", action="append", choices=STAFF_ROLES, help="a role of the member (repeatable)")
    sp.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise StaffCliError("the passwords differ")
    return first


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env(os.environ)
    url = with_password(settings.redis_url or f"unix://{(settings.redis_dir / 'redis.sock').resolve()}")
    if args.action != "list" and not args.name:
        raise StaffCliError(f"staff {args.action} needs --name")
    password = read_password(args.password_stdin) if args.action == "add" else ""

    async def main() -> int:
        client = store.connect(url, max_connections=2, tls=settings.redis_tls())
        book = StaffBook(client)
        try:
            if args.action == "add":
                staff = await book.add(args.name, password, args.role or (), int(time.time()))
                print(f"staff member {staff.name} added with roles {','.join(sorted(staff.roles))}")
            elif args.action == "disable":
                await book.disable(args.name)
                print(f"staff member {args.name} disabled; its sessions have ended")
            else:
                for s in await book.list():
                    created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(s.created_s))
                    state = "disabled" if s.disabled else "active"
                    print(f"{s.name}  roles={','.join(sorted(s.roles))}  {state}  {created} UTC")
        except ChargingError as exc:
            raise StaffCliError(str(exc)) from None
        finally:
            await client.aclose()
        return 0

    return asyncio.run(main())
