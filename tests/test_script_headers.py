"""Each Lua script's header against the Python record of its arguments.

ARGV is positional: the only thing that keeps the caller and the script in step is that
the header's ``-- ARGV <Record>`` list, the record's fields and its ``to_argv()`` name the
same values in the same order. These tests read the headers; they fail when a field is
added, renamed or reordered on one side only.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from importlib import resources
from types import ModuleType

import pytest

from charging import script_args
from postpaid import scripts

# Every script, with the records whose fields its header lists (a repeated group too).
SCRIPTS: dict[tuple[str, str], tuple[type, ...]] = {
    ("charging", "session.lua"): (script_args.SessionArgs, script_args.RatingGroupArgs),
    ("charging", "event.lua"): (script_args.EventArgs,),
    ("charging", "topup.lua"): (script_args.TopupArgs,),
    ("charging", "buy.lua"): (script_args.BuyArgs,),
    ("charging", "sweep.lua"): (script_args.SweepArgs,),
    ("charging", "due_index.lua"): (script_args.DueHint, script_args.DueTake, script_args.DueSettle),
    ("charging", "outbox_trim.lua"): (script_args.OutboxTrimArgs,),
    ("postpaid", "enrol.lua"): (scripts.EnrolArgs,),
    ("postpaid", "close.lua"): (scripts.CloseArgs,),
    ("postpaid", "credit.lua"): (scripts.CreditArgs,),
    ("postpaid", "issue.lua"): (scripts.IssueArgs,),
    ("postpaid", "pay.lua"): (scripts.PayArgs,),
    ("postpaid", "dunning.lua"): (scripts.DunningArgs, scripts.DunningStep),
    ("postpaid", "purge.lua"): (scripts.PurgeArgs,),
    ("postpaid", "dispute.lua"): (scripts.DisputeArgs,),
    ("postpaid", "prepaid_close.lua"): (scripts.PrepaidCloseArgs,),
}
RECORD_MODULES: tuple[ModuleType, ...] = (script_args, scripts)
RECORDS: list[type] = sorted({r for records in SCRIPTS.values() for r in records}, key=lambda r: r.__name__)
# Shared functions, prepended to scripts: no KEYS or ARGV of their own.
LIBRARIES = {("charging", "ledger_lib.lua")}

SECTION = re.compile(r"^-- ARGV (\w+)\b")
FIELD = re.compile(r"^--   (\w+)(?:\s|$)")
CONTINUED = re.compile(r"^--    ")


def source(script: tuple[str, str]) -> str:
    package, name = script
    return resources.files(package).joinpath(name).read_text()


def split_header(text: str) -> tuple[list[str], str]:
    """The leading comment lines, and the code after them."""
    lines = text.splitlines()
    n = next((i for i, line in enumerate(lines) if not line.startswith("--")), len(lines))
    return lines[:n], "\n".join(lines[n:])


def argv_sections(header: list[str]) -> dict[str, list[str]]:
    """``-- ARGV <Record>`` sections: the field names listed under each, in order.

    A field line is ``--   name`` (three spaces) with an optional description; deeper
    indented lines continue a description. Text right after the section line, before
    its first field, belongs to the section line.
    """
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in header:
        if m := SECTION.match(line):
            current = sections.setdefault(m.group(1), [])
        elif current is None:
            continue
        elif m := FIELD.match(line):
            current.append(m.group(1))
        elif CONTINUED.match(line) or not current:
            continue
        else:
            current = None
    return sections


def test_argv_sections_are_read_as_written() -> None:
    header = [
        "-- KEYS[1] a key",
        "-- ARGV Outer (somewhere), in this order:",
        "--   first               a description",
        "--                       that goes on",
        "--   second",
        "-- ARGV Inner, per group: a section line",
        "-- that goes on",
        "--   only",
        "--",
        "--   not_a_field",
        "-- Reply: 1",
    ]
    assert argv_sections(header) == {"Outer": ["first", "second"], "Inner": ["only"]}


def field_names(record: type) -> list[str]:
    return [f.name for f in dataclasses.fields(record)]


@pytest.mark.parametrize("script", list(SCRIPTS), ids=lambda s: f"{s[0]}/{s[1]}")
def test_header_lists_keys_argv_by_record_fields_and_reply(script: tuple[str, str]) -> None:
    header, code = split_header(source(script))
    text = "\n".join(header)
    assert "-- KEYS[1]" in text
    assert "Reply" in text
    records = SCRIPTS[script]
    sections = argv_sections(header)
    assert sorted(sections) == sorted(r.__name__ for r in records)
    for record in records:
        assert sections[record.__name__] == field_names(record), record.__name__
        op = getattr(record, "OP", None)
        if op is not None:
            assert re.search(rf"^-- ARGV {record.__name__}\b.*\bOP {op}\b", text, re.M)
        # The script names each argument in a local (or a table field) of the same name.
        for name in field_names(record):
            assert re.search(rf"\b{name}\b", code), f"{script[1]} does not name {name}"


@pytest.mark.parametrize("script", list(SCRIPTS), ids=lambda s: f"{s[0]}/{s[1]}")
def test_arguments_are_unpacked_before_the_script_touches_redis(script: tuple[str, str]) -> None:
    _header, code = split_header(source(script))
    first_call = code.index("redis.call(")
    assert "ARGV" not in code[first_call:]


def test_every_script_and_every_record_is_checked() -> None:
    packages = {package for package, _name in SCRIPTS}
    on_disk = {
        (package, f.name) for package in packages for f in resources.files(package).iterdir() if f.name.endswith(".lua")
    }
    assert on_disk - LIBRARIES == set(SCRIPTS)
    for module in RECORD_MODULES:
        for value in vars(module).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and hasattr(value, "to_argv"):
                assert value in RECORDS, f"{value.__name__} has no script header"


def sample(record: type) -> tuple[object, dict[str, object]]:
    """An instance with a distinct value per field (empty repeated groups), and the
    values ``to_argv`` must send as they are."""
    hints = typing.get_type_hints(record)
    values: dict[str, object] = {}
    plain: dict[str, object] = {}
    for i, name in enumerate(field_names(record)):
        hint = hints[name]
        if hint is bool:
            values[name] = True
        elif typing.get_origin(hint) is tuple:
            values[name] = ()
        elif int in (hint, *typing.get_args(hint)):
            values[name] = plain[name] = 1000 + i
        else:
            values[name] = plain[name] = f"<{name}>"
    return record(**values), plain


@pytest.mark.parametrize("record", RECORDS, ids=[r.__name__ for r in RECORDS])
def test_to_argv_sends_the_fields_in_their_order(record: type) -> None:
    instance, plain = sample(record)
    argv = instance.to_argv()  # type: ignore[attr-defined]
    op = getattr(record, "OP", None)
    if op is not None:
        assert argv[0] == op
        argv = argv[1:]
    names = field_names(record)
    # A repeated group in the middle is sent as its count; one at the end as its values.
    last_is_rest = typing.get_origin(typing.get_type_hints(record)[names[-1]]) is tuple and len(argv) == len(names) - 1
    assert len(argv) == len(names) - (1 if last_is_rest else 0)
    for i, name in enumerate(names):
        if name in plain:
            assert argv[i] == plain[name], name
        elif isinstance(getattr(instance, name), tuple) and i < len(argv):
            assert argv[i] == 0, name
