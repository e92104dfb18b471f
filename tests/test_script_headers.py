"""Each Lua script's header against the Python record of its arguments.

ARGV is positional: the only thing that keeps the caller and the script in step is that
the header's ``-- ARGV <Record>`` list, the record's fields, its ``to_argv()`` and the
script's own ``local name = ARGV[n]`` lines name the same values in the same order. These
tests read the headers and those lines; they fail when a field is added, renamed or
reordered on one side only.
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
    ("charging", "cdr_trim.lua"): (script_args.CdrTrimArgs,),
    ("charging", "plan_index.lua"): (
        script_args.PlanJoin,
        script_args.PlanLeave,
        script_args.CatalogSwitch,
        script_args.PlanIndexInit,
    ),
    ("charging", "plan_move.lua"): (script_args.PlanMoveArgs,),
    ("charging", "lease.lua"): (script_args.LeaseExtend, script_args.LeaseRelease),
    ("postpaid", "enrol.lua"): (scripts.EnrolArgs,),
    ("postpaid", "close.lua"): (scripts.CloseArgs,),
    ("postpaid", "credit.lua"): (scripts.CreditArgs,),
    ("postpaid", "settle.lua"): (scripts.SettleArgs,),
    ("postpaid", "pay.lua"): (scripts.PayArgs,),
    ("postpaid", "dunning.lua"): (scripts.DunningArgs, scripts.DunningStep),
    ("postpaid", "purge.lua"): (scripts.PurgeArgs,),
    ("postpaid", "dispute.lua"): (scripts.DisputeArgs,),
    ("postpaid", "prepaid_close.lua"): (scripts.PrepaidCloseArgs,),
    ("postpaid", "credit_open.lua"): (scripts.CreditOpenArgs,),
    ("postpaid", "settled.lua"): (scripts.SettledArgs,),
    ("postpaid", "delivered.lua"): (scripts.DeliveredArgs,),
    ("postpaid", "redeliver.lua"): (scripts.RedeliverArgs,),
}
RECORD_MODULES: tuple[ModuleType, ...] = (script_args, scripts)
RECORDS: list[type] = sorted({r for records in SCRIPTS.values() for r in records}, key=lambda r: r.__name__)
# Shared functions, prepended to scripts: no KEYS or ARGV of their own.
LIBRARIES = {("charging", "ledger_lib.lua"), ("postpaid", "slot_lib.lua")}

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
    header, _code = split_header(source(script))
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


# Where the script reads a value: "name = ARGV[3]" (or tonumber(...)), a group's field
# "name = ARGV[j + 2]" or "name = ARGV[4 + 3 * i]", a field after the groups
# "name = ARGV[4 + 3 * #steps]", the rest "name = {unpack(ARGV, 8)}" or "name = ARGV",
# and a group count "for i = 1, tonumber(ARGV[15])".
READ = re.compile(
    r"(\w+) = (?:tonumber\()?(?:ARGV\[(\d+)\]|ARGV\[j(?: \+ (\d+))?\]|ARGV\[(\d+) \+ \d+ \* i\]"
    r"|ARGV\[(\d+) \+ \d+ \* #\w+\]|\{unpack\(ARGV, (\d+)\)\}|(ARGV)\b)"
)
COUNT = re.compile(r"for \w+ = \d, tonumber\(ARGV\[(\d+)\]\)")


def reads(code: str) -> tuple[list[tuple[str, str, int]], list[int]]:
    """(name, "top" or "group", 0-based position) of each value the script reads from
    ARGV into a name, and the positions of group counts."""
    found = []
    # "a, b = ARGV[2], ARGV[3]": one read per name
    several = re.compile(r"^\s*(?:local )?(\w+(?:, \w+)+) = (.*ARGV.*)$", re.M)
    for names, values in several.findall(code):
        for name, value in zip(names.split(", "), values.split(", "), strict=True):
            found.append((name, "top", int(re.findall(r"ARGV\[(\d+)\]", value)[0]) - 1))
    for name, top, in_group, group_at, after_groups, rest, whole in READ.findall(several.sub("", code)):
        if top or after_groups or rest:
            found.append((name, "top", int(top or after_groups or rest) - 1))
        elif whole:
            found.append((name, "top", 0))
        elif group_at:
            found.append((name, "group-absolute", int(group_at) - 1))
        else:
            found.append((name, "group", int(in_group or 0)))
    return found, [int(n) - 1 for n in COUNT.findall(code)]


@pytest.mark.parametrize("script", list(SCRIPTS), ids=lambda s: f"{s[0]}/{s[1]}")
def test_script_reads_each_argument_into_its_name_from_its_position(script: tuple[str, str]) -> None:
    _header, code = split_header(source(script))
    records = SCRIPTS[script]
    operations = [r for r in records if hasattr(r, "OP")]
    tops = operations or [records[0]]
    groups = [r for r in records if r not in tops]
    found, counts = reads(code)
    # ARGV[1] of an operation record is its OP.
    offset = 1 if operations else 0
    top_fields = [field_names(r) for r in tops]
    count_at = counts[0] if counts else -1
    for name, where, at in found:
        if where == "top" and offset and at == 0:
            assert name == "op"
        elif where == "top":
            assert any(0 <= at - offset < len(f) and f[at - offset] == name for f in top_fields), (name, at + 1)
        elif where == "group":
            assert field_names(groups[0])[at] == name, (name, at)
        else:  # counted from the ARGV position after the count
            assert field_names(groups[0])[at - count_at - 1] == name, (name, at + 1)
    read = {name for name, _where, _at in found}
    for fields in top_fields:
        for i, name in enumerate(fields):
            assert name in read or i + offset in counts, f"{script[1]} does not read {name} into a name"
    for group in groups:
        assert counts, f"{script[1]} does not read the number of {group.__name__}"
        for name in field_names(group):
            assert name in read, f"{script[1]} does not read {name} into a name"


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
