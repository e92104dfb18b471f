"""``charging staff add|disable|list`` against a real Redis: passwords from stdin, never
echoed nor stored in clear; a disabled member's sessions end."""

from __future__ import annotations

import os
import subprocess
import sys

import redis

from console import keys


def staff(redis_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charging.cli", "staff", *args],
        env={**os.environ, "CHARGING_REDIS_URL": redis_url},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_staff_are_added_listed_and_disabled_from_the_cli(redis_url: str, r: redis.Redis) -> None:
    password = "a very long secret"
    added = staff(
        redis_url,
        "add",
        "--name",
        "carla",
        "--role",
        "crm",
        "--role",
        "billing",
        "--password-stdin",
        stdin=password + "\n",
    )
    assert added.returncode == 0, added.stderr
    assert "carla added with roles billing,crm" in added.stdout and password not in added.stdout + added.stderr
    stored = r.hgetall(keys.staff("carla"))
    assert str(stored["password"]).startswith("scrypt$") and password not in str(stored)

    again = staff(redis_url, "add", "--name", "carla", "--role", "crm", "--password-stdin", stdin=password + "\n")
    assert again.returncode == 1 and "exists already" in again.stderr
    short = staff(redis_url, "add", "--name", "bo", "--role", "crm", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "password: must be at least 12 characters" in short.stderr
    no_role = staff(redis_url, "add", "--name", "bo", "--password-stdin", stdin=password + "\n")
    assert no_role.returncode == 1 and "role: at least one of" in no_role.stderr
    bad_role = staff(redis_url, "add", "--name", "bo", "--role", "network", "--password-stdin", stdin=password)
    assert bad_role.returncode == 2  # not a staff role: refused by the argument parser

    r.hset(keys.session("s1"), mapping={"staff": "carla", "csrf": "t"})
    r.sadd(keys.staff_sessions("carla"), "s1")
    disabled = staff(redis_url, "disable", "--name", "carla")
    assert disabled.returncode == 0 and not r.exists(keys.session("s1"))
    listed = staff(redis_url, "list")
    assert listed.returncode == 0 and "carla  roles=billing,crm  disabled" in listed.stdout
    assert staff(redis_url, "disable", "--name", "nobody").returncode == 1
