"""One settings tree: the TOML tables, environment variables and command-line flags of every
subcommand, generated from the dataclasses that hold the settings, with one coercion.

A table is a frozen dataclass whose fields all have defaults: ``[daemon]`` (DaemonConfig),
``[crawl]`` (CrawlSettings), ``[ingest]`` (IngestSettings), ``[train]`` (TrainConfig). Each
field is a key, spelt with dashes in TOML and flags (``max-queued``) and in upper case in the
environment (``CRYSTALLINE_CRAWL_MAX_QUEUED``). A field whose type is itself a dataclass lends
its fields to the table (``[ingest] ocr`` is ``IngestSettings.limits.ocr``). A new field is a
new key everywhere, with nothing to wire; its metadata may add:

- ``help``: the flag's help text; ``choices``: the values allowed (a str field);
- ``aliases``: older spellings, still read, each with a one-line deprecation notice;
- ``key``: the user-facing name when it differs from the field's (a structured field);
- ``parse``: turns a list of strings into the field's value (``HOST=MIN:MAX`` entries);
- ``internal``: not a setting (set by the program, e.g. from another table);
- ``presets``: {value: {key: value}}: each choice of this key sets other keys of its table
  (``[train] preset = "base"``), below what a file, the environment or a flag gives them.

Precedence: the field's default < the command's own default (``crystalline run`` trains with
12 workers) < the chosen preset's value < the file (``--config``, else
``$CRYSTALLINE_CONFIG``) < the environment < the command line. Every value keeps where it
came from (``crystalline config`` prints it). An
unknown key or table, a value of the wrong kind or one its dataclass refuses is a
:class:`UsageError`: one line naming the source (file, variable or flag), the key and what is
allowed; it exits 64 (a file that cannot be read or parsed is an ordinary error, exit 1).
Spellings of before the tables (top-level keys, the flat ``[daemon]``, ``CRYSTALLINE_<KEY>``,
``run --seed-url``; see ``RENAMED``) are read with a one-line deprecation warning.

This module imports only the standard library: the packages that own the tables import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import linecache
import logging
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exit_status import UsageError

log = logging.getLogger("crystalline.settings")

ENV_PREFIX = "CRYSTALLINE_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
TABLE_NAMES = ("daemon", "crawl", "ingest", "train")  # every table any command reads

# the flat keys of before the tables (one [daemon] table and top-level keys), where they went;
# the rest map by rule: crawl_X is [crawl] X, any other name a key of the command's tables
RENAMED: dict[str, tuple[str, str]] = {
    "seed_url": ("crawl", "start_url"),
    "allowed_domain": ("crawl", "allowed_domains"),
    "user_agent": ("crawl", "user_agent"),
    "languages": ("ingest", "languages"),
    "language_min_score": ("ingest", "language_min_score"),
    "no_pii": ("ingest", "no_pii"),
    "quality_rule": ("ingest", "quality_rule"),
}

_KIND_WORDS = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "path": "a path",
    "list": "a list of strings",
}


@dataclass(frozen=True)
class Key:
    """One setting: where it lives in its table's dataclass, its kind and its default."""

    table: str
    name: str  # user-facing, with underscores
    path: tuple[str, ...]  # attributes from the table's dataclass down to the field
    kind: str  # bool, int, float, str, path or list
    optional: bool  # None is allowed, given as ""
    default: Any  # as the dataclass holds it
    help: str = ""
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    parse: Callable[[tuple[str, ...]], Any] | None = None
    container: type = tuple  # a list key's type: tuple or frozenset
    # a preset key: each of its values sets other keys of the table
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False)

    @property
    def dashed(self) -> str:
        return self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.table.upper()}_{self.name.upper()}"

    @property
    def label(self) -> str:
        return f"[{self.table}] {self.dashed}"

    def allowed(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        word = _KIND_WORDS[self.kind]
        return word + ' (or "" for none)' if self.optional else word

    def coerce(self, raw: Any, source: str) -> Any:
        """``raw`` (a TOML value, or the text of a variable or flag) as this key's value;
        UsageError naming ``source``, the key and what is allowed."""
        try:
            return self._coerce(raw)
        except (TypeError, ValueError) as exc:
            detail = f" ({exc})" if self.parse is not None and str(exc) else ""
            raise UsageError(
                f"{source}: {self.label} must be {self.allowed()}, got {_show_raw(raw)}{detail}"
            ) from None

    def _coerce(self, raw: Any) -> Any:
        if self.optional and (raw is None or (isinstance(raw, str) and not raw.strip())):
            return None
        if self.kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower() if isinstance(raw, str) else ""
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if self.kind == "list":
            items = _items(raw)
            return self.parse(items) if self.parse is not None else self.container(items)
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise TypeError
        if self.kind == "int":
            if isinstance(raw, float):
                raise ValueError
            return int(raw)
        if self.kind == "float":
            value = float(raw)
            if math.isnan(value):
                raise ValueError
            return value
        if not isinstance(raw, str):
            raise TypeError
        if self.choices and raw not in self.choices:
            raise ValueError
        return Path(raw) if self.kind == "path" else raw

    def shown(self, raw: Any, value: Any) -> Any:
        """The value as TOML/JSON writes it (paths as text, None as ""); a parsed list key is
        shown as its entries (``raw``; none for its default)."""
        if self.parse is not None:
            return list(_items(raw)) if raw is not None else []
        if value is None:
            return ""
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | frozenset):
            return sorted(value) if isinstance(value, frozenset) else list(value)
        return value


def _items(raw: Any) -> tuple[str, ...]:
    """A list key's entries: a TOML array of strings, or comma-separated text."""
    if isinstance(raw, str):
        parts: Iterable[Any] = raw.split(",")
    elif isinstance(raw, list | tuple):
        parts = raw
    else:
        raise TypeError
    out = []
    for part in parts:
        if not isinstance(part, str):
            raise TypeError
        if part.strip():
            out.append(part.strip())
    return tuple(out)


def _show_raw(raw: Any) -> str:
    return repr(raw) if not isinstance(raw, list) else "[" + ", ".join(map(repr, raw)) + "]"


# ---- tables -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A dataclass seen as a settings table: its keys, by name."""

    name: str
    cls: type
    keys: dict[str, Key]

    def lookup(self, name: str) -> tuple[Key, bool, bool] | None:
        """(key, negate, deprecated) for a name given by a user: a key, an old spelling of one,
        or ``no_X`` for a boolean X (``no-sitemaps = true`` is ``sitemaps = false``)."""
        if name in self.keys:
            return self.keys[name], False, False
        for key in self.keys.values():
            if name in key.aliases:
                return key, False, True
        if name.startswith("no_"):
            found = self.lookup(name[3:])
            if found is not None and found[0].kind == "bool":
                return found[0], not found[1], True
        return None

    def build(self, values: Mapping[str, Any]) -> Any:
        """An instance with ``values`` (key name -> value) in place of the defaults."""
        return _build(self.cls(), {self.keys[n].path: v for n, v in values.items()}, ())


def _build(instance: Any, values: Mapping[tuple[str, ...], Any], prefix: tuple[str, ...]) -> Any:
    """``instance`` with the values at their attribute paths (a nested dataclass rebuilt)."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(instance):
        path = (*prefix, f.name)
        if path in values:
            changes[f.name] = values[path]
        elif any(p[: len(path)] == path for p in values):
            changes[f.name] = _build(getattr(instance, f.name), values, path)
    return dataclasses.replace(instance, **changes) if changes else instance


def table(name: str, cls: type) -> Table:
    """The table of dataclass ``cls``; TypeError names a field of a kind the tree cannot read
    (give it ``parse`` or ``internal`` in its metadata)."""
    keys: dict[str, Key] = {}
    _collect(name, cls, cls(), (), keys)
    for key in keys.values():
        for choice, values in key.presets.items():
            for other in values:
                if other not in keys or other == key.name:
                    raise TypeError(f"[{name}] {key.dashed}: preset {choice!r} sets {other!r}, no other key")
    return Table(name, cls, keys)


def _comments(cls: type) -> dict[str, str]:
    """Each field's trailing comment in the class's source (``name: int = 3  # what it is``): the
    help text of a field whose metadata gives none."""
    try:
        lines = _class_lines(cls)
    except (OSError, TypeError):
        return {}
    found = (re.match(r"\s+(\w+): [^#]*#\s*(.+)$", line) for line in lines)
    return {m[1]: m[2].strip() for m in found if m}


def _class_lines(cls: type) -> list[str]:
    """The source lines of ``cls``: for a class of a module's top level, from its ``class`` line
    to the next line that is not indented, found by a scan of the module's lines, as
    inspect.getsource finds it by parsing the whole module (1-3 ms a module at every command's
    start); for any other, inspect.getsource's."""
    if "." not in cls.__qualname__:
        lines = linecache.getlines(inspect.getsourcefile(cls) or "")
        head = re.compile(rf"class {re.escape(cls.__name__)}\b")
        start = next((i for i, line in enumerate(lines) if head.match(line)), None)
        if start is not None:
            ends = (j for j in range(start + 1, len(lines)) if lines[j].strip() and not lines[j][0].isspace())
            return lines[start : next(ends, len(lines))]
    return inspect.getsource(cls).splitlines()


def _collect(
    table_name: str, cls: type, instance: Any, prefix: tuple[str, ...], keys: dict[str, Key]
) -> None:
    hints = typing.get_type_hints(cls)
    comments = _comments(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("internal"):
            continue
        hint = hints[f.name]
        default = getattr(instance, f.name)
        if dataclasses.is_dataclass(hint) and "parse" not in meta:
            _collect(table_name, typing.cast(type, hint), default, (*prefix, f.name), keys)
            continue
        kind, optional, container = _kind_of(hint, meta)
        if kind is None:
            raise TypeError(
                f"{cls.__name__}.{f.name}: a {hint} cannot be a setting; give it metadata "
                "'parse' (a list of strings to the value) or 'internal'"
            )
        key = Key(
            table=table_name,
            name=meta.get("key", f.name),
            path=(*prefix, f.name),
            kind=kind,
            optional=optional,
            default=default,
            help=meta.get("help", comments.get(f.name, "")),
            choices=tuple(meta.get("choices", ())),
            aliases=tuple(meta.get("aliases", ())),
            parse=meta.get("parse"),
            container=container,
            presets=meta.get("presets", {}),
        )
        if key.name in keys:
            raise TypeError(f"[{table_name}] {key.dashed}: two fields of {cls.__name__} give this key")
        keys[key.name] = key


def _kind_of(hint: Any, meta: Mapping[str, Any]) -> tuple[str | None, bool, type]:
    """(kind, optional, container) of a field's type."""
    if "parse" in meta:
        return "list", False, tuple
    args = typing.get_args(hint)
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return None, False, tuple
        hint, optional = rest[0], True
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (tuple, frozenset) and args and args[0] is str and (origin is frozenset or args[-1] is ...):
        return "list", optional, origin
    simple = {bool: "bool", int: "int", float: "float", str: "str", Path: "path"}
    return simple.get(hint), optional, tuple


def add_config_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """``--config FILE``: the TOML file whose tables (``what``) set any of the command's options."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"TOML file whose {what} sets any of the options below (env {CONFIG_ENV}); "
        "flags win over the environment, which wins over the file",
    )


# ---- where a value came from --------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a value came from: ``default`` (the field's), ``command`` (the command's own
    default), ``preset`` (and which), ``file``, ``env`` or ``flag``, and which file, variable
    or flag."""

    kind: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.where}".strip()


@dataclass(frozen=True)
class Resolved:
    """The tables of one command, built, with each key's value and source."""

    tables: dict[str, Any]  # table name -> dataclass instance
    shown: dict[tuple[str, str], Any]  # (table, key) -> the value as TOML/JSON writes it
    sources: dict[tuple[str, str], Source]

    def report(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{table: {key: {"value", "source", "where"}}}, in the tables' order."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (table_name, name), value in self.shown.items():
            src = self.sources[(table_name, name)]
            row = {"value": value, "source": src.kind, "where": src.where}
            out.setdefault(table_name, {})[name.replace("_", "-")] = row
        return out


Given = tuple[Any, Source, Any]  # value, where it came from, how it is shown


# ---- one command's tree -------------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """The tables one command reads, the command's own defaults, the keys it leaves out (no flag,
    not reported, refused anywhere: ``exclude``) or shares with the daemon's file (no flag, not
    reported; a file or the environment may set them: checked, then unused: ``shared``), and
    which tables' flags carry the table's name (``run --crawl-concurrency``)."""

    tables: dict[str, Table]
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    exclude: dict[str, tuple[str, ...]] = field(default_factory=dict)
    shared: dict[str, tuple[str, ...]] = field(default_factory=dict)
    prefixed: tuple[str, ...] = ()

    def key(self, table_name: str, name: str) -> Key:
        return self.tables[table_name].keys[name]

    def default(self, key: Key) -> tuple[Any, Source]:
        override = self.defaults.get(key.table, {})
        if key.name in override:
            return override[key.name], Source("command")
        return key.default, Source("default")

    def unused(self, table_name: str) -> tuple[str, ...]:
        """The keys of a table this command does not use (excluded or shared)."""
        return self.exclude.get(table_name, ()) + self.shared.get(table_name, ())

    def keys(self) -> Iterable[Key]:
        for name, tab in self.tables.items():
            for key in tab.keys.values():
                if key.name not in self.unused(name):
                    yield key

    def flag(self, key: Key, name: str | None = None) -> str:
        word = (name or key.name).replace("_", "-")
        return f"--{key.table}-{word}" if key.table in self.prefixed else f"--{word}"

    # ---- the command line ------------------------------------------------------------------
    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        """One flag per key (booleans: ``--X`` and ``--no-X``), grouped by table, their help
        showing this command's defaults; old spellings are accepted and hidden."""
        taken = {s for action in parser._actions for s in action.option_strings}
        for name, tab in self.tables.items():
            group = parser.add_argument_group(f"[{name}] settings (env {ENV_PREFIX}{name.upper()}_<KEY>)")
            for key in tab.keys.values():
                if key.name not in self.unused(name):
                    self._add_key(group, key, taken)
        self._add_renamed(parser, taken)

    def _add_key(self, group: argparse._ArgumentGroup, key: Key, taken: set[str]) -> None:
        default, _ = self.default(key)
        text = key.help + " " if key.help else ""
        if key.kind == "bool":
            on, off = self.flag(key), self.flag(key, "no_" + key.name)
            if key.name.startswith("no_"):
                off = ""
            for flag, value in ((on, True), (off, False)):
                if flag:
                    _claim(flag, taken)
                    what = f"{text or key.dashed + ' '}(default: {'on' if default else 'off'})"
                    shown = (what if value else f"off: {what}") if value != default else argparse.SUPPRESS
                    group.add_argument(flag, action=_Flag, key=key, const=value, nargs=0, help=shown)
        else:
            metavar = "{" + ",".join(key.choices) + "}" if key.choices else key.kind.upper()
            if key.kind == "list":
                metavar = "VALUE"
                text += "" if "repeatable" in text else "(repeatable) "
            shown = key.shown(None, default)
            text += f"(default: {shown!r})" if shown not in ("", []) else "(default: none)"
            _claim(self.flag(key), taken)
            group.add_argument(self.flag(key), action=_Flag, key=key, metavar=metavar, help=text)
        for alias in key.aliases:
            self._add_alias(group, self.flag(key, alias), key, None, taken)

    def _add_alias(self, group: Any, flag: str, key: Key, const: bool | None, taken: set[str]) -> None:
        if flag in taken:
            return
        taken.add(flag)
        if key.kind == "bool":
            group.add_argument(flag, action=_Flag, key=key, const=True if const is None else const,
                               nargs=0, deprecated=True, help=argparse.SUPPRESS)  # fmt: skip
        else:
            group.add_argument(flag, action=_Flag, key=key, deprecated=True, help=argparse.SUPPRESS)

    def _add_renamed(self, parser: argparse.ArgumentParser, taken: set[str]) -> None:
        """The flat flags of before the tables (``run --seed-url``), hidden."""
        for old, (table_name, name) in RENAMED.items():
            found = self.tables[table_name].lookup(name) if table_name in self.tables else None
            if found is not None and table_name in self.prefixed:
                self._add_alias(parser, "--" + old.replace("_", "-"), found[0], not found[1], taken)

    # ---- resolution ------------------------------------------------------------------------
    def resolve(
        self, args: argparse.Namespace, env: Mapping[str, str], config: Path | None = None
    ) -> Resolved:
        """Defaults < the command's defaults < file < environment < flags, each table built
        and validated; UsageError (one line, naming the source) on anything wrong."""
        given: dict[tuple[str, str], Given] = {}
        path = config if config is not None else (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
        if path is not None:
            self._from_file(path, given)
        self._from_env(env, given)
        for (table_name, name), (raw, flag, deprecated) in (
            getattr(args, "settings_flags", None) or {}
        ).items():
            key = self.key(table_name, name)
            if deprecated:
                negative = key.kind == "bool" and raw is False and not key.name.startswith("no_")
                _deprecated(flag, self.flag(key, "no_" + key.name) if negative else self.flag(key))
            value = key.coerce(raw, flag)
            given[(table_name, name)] = (value, Source("flag", flag), key.shown(raw, value))
        presets = self._presets(given)
        values: dict[tuple[str, str], Any] = {}
        shown: dict[tuple[str, str], Any] = {}
        sources: dict[tuple[str, str], Source] = {}
        for key in self.keys():
            slot = (key.table, key.name)
            if slot in given or slot in presets:
                values[slot], sources[slot], shown[slot] = given.get(slot) or presets[slot]
            else:
                values[slot], sources[slot] = self.default(key)
                shown[slot] = key.shown(None, values[slot])
        built = {}
        left_out = {slot: given[slot] for slot in given if slot not in values}  # the shared keys set
        sources.update({slot: source for slot, (_, source, _) in left_out.items()})
        for name, tab in self.tables.items():
            changed = {
                k: v for (t, k), v in values.items() if t == name and sources[(t, k)].kind != "default"
            }
            changed.update({k: value for (t, k), (value, _, _) in left_out.items() if t == name})
            built[name] = self._build(tab, changed, sources)
        return Resolved(built, shown, sources)

    def _presets(self, given: dict[tuple[str, str], Given]) -> dict[tuple[str, str], Given]:
        """The values that the chosen value of each preset key sets."""
        out: dict[tuple[str, str], Given] = {}
        for key in self.keys():
            if key.presets:
                slot = (key.table, key.name)
                chosen = given[slot][0] if slot in given else self.default(key)[0]
                for name, value in key.presets.get(chosen, {}).items():
                    other = self.key(key.table, name)
                    out[(key.table, name)] = (value, Source("preset", chosen), other.shown(None, value))
        return out

    def _build(self, tab: Table, changed: dict[str, Any], sources: dict[tuple[str, str], Source]) -> Any:
        try:
            instance = tab.build(changed)
            validate = getattr(instance, "validate", None)
            if validate is not None:
                validate()
        except ValueError as exc:
            text = " ".join(str(exc).split())
            named = [
                str(sources[(tab.name, n)])
                for n in changed
                if re.search(
                    rf"(?<!\w)(?<![^-]-){re.escape(n.replace('_', '-'))}(?![\w-])", text.replace("_", "-")
                )
            ]
            where = f" (set by {', '.join(named)})" if named else ""
            raise UsageError(f"[{tab.name}] {text}{where}") from None
        return instance

    def _from_file(self, path: Path, given: dict[tuple[str, str], Given]) -> None:
        data = read_toml(path)
        for top, value in data.items():
            name = top.replace("-", "_")
            if isinstance(value, dict) and name in TABLE_NAMES:
                for key_name, raw in value.items():
                    where, flat = f"[{name}] {key_name}", key_name.replace("-", "_")
                    if name == "daemon" and name in self.tables and not self.tables[name].lookup(flat):
                        # the flat [daemon] of before the tables
                        if not self._take_flat("file", flat, raw, str(path), where, given):
                            self._take("file", name, flat, raw, str(path), where, given)  # unknown
                    else:
                        self._take("file", name, flat, raw, str(path), where, given)
            elif isinstance(value, dict):
                raise UsageError(f"{path}: unknown table [{top}] (tables: {', '.join(TABLE_NAMES)})")
            else:
                if not self._take_flat("file", name, value, str(path), top, given):
                    self._unknown_flat(str(path), top, strict=True)

    def _from_env(self, env: Mapping[str, str], given: dict[tuple[str, str], Given]) -> None:
        for var, raw in sorted(env.items()):
            # CRYSTALLINE_TEST_* belong to the test suite, CRYSTALLINE_CONFIG names the file
            if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV or var.startswith(ENV_PREFIX + "TEST_"):
                continue
            rest = var[len(ENV_PREFIX) :].lower()
            table_name, _, name = rest.partition("_")
            if table_name in TABLE_NAMES and (
                table_name not in self.tables or self.tables[table_name].lookup(name)
            ):
                self._take("env", table_name, name, raw, var, var, given)
            elif not self._take_flat("env", rest, raw, var, var, given):
                # another command may read it: only one that reads every table can tell
                self._unknown_flat(var, var, strict=set(self.tables) == set(TABLE_NAMES))

    def _take_flat(self, kind: str, name: str, raw: Any, source: str, where: str,
                   given: dict[tuple[str, str], Given]) -> bool:  # fmt: skip
        """A key of the flat layout of before the tables (top-level TOML, [daemon] crawl-delay,
        CRYSTALLINE_<KEY>); False when the name means nothing there."""
        table_name, new = RENAMED.get(name, ("", ""))
        if not table_name and name.startswith("crawl_"):
            table_name, new = "crawl", name[len("crawl_") :]
        if not table_name:
            table_name = next((t for t, tab in self.tables.items() if tab.lookup(name)), "")
            new = name
        if not table_name:
            return False
        found = self.tables[table_name].lookup(new) if table_name in self.tables else None
        if found is not None:
            _deprecated(_spot(source, where), _new_name(kind, found[0], found[1]))
        self._take(kind, table_name, new, raw, source, where, given, quiet=True)
        return True

    def _unknown_flat(self, source: str, where: str, strict: bool) -> None:
        """A name that is no key (an error when ``strict``)."""
        if strict:
            raise UsageError(
                f"{source}: unknown setting {where!r} (expected [TABLE] KEY in a file, "
                f"{ENV_PREFIX}<TABLE>_<KEY> in the environment; `crystalline config` lists them)"
            )

    def _take(self, kind: str, table_name: str, name: str, raw: Any, source: str, where: str,
              given: dict[tuple[str, str], Given], quiet: bool = False) -> None:  # fmt: skip
        if table_name not in self.tables:
            return  # another command's table
        tab = self.tables[table_name]
        found = tab.lookup(name)
        # a shared key (no flag) is still a key of the table: a file or an environment shared with
        # the daemon may set it; resolve checks it, and the command ignores it. An excluded one is
        # refused: the command would drop it (run's [crawl] data-dir: the frontier is the state's)
        if found is None or found[0].name in self.exclude.get(table_name, ()):
            raise UsageError(f"{source}: {unknown(tab, name, self.unused(table_name))}")
        key, negate, deprecated = found
        if deprecated and not quiet:
            _deprecated(_spot(source, where), _new_name(kind, key, negate))
        value = key.coerce(raw, source)
        value = not value if negate else value
        given[(table_name, key.name)] = (value, Source(kind, source), key.shown(raw, value))


def _spot(source: str, where: str) -> str:
    return where if source == where else f"{source}: {where}"


def _new_name(kind: str, key: Key, negate: bool) -> str:
    """The current spelling of ``key`` in a file or the environment (a negated old name, such as
    ``no-pii = true``, is the key set to the opposite)."""
    name = key.env if kind == "env" else key.label
    return f"{name} (the opposite value)" if negate else name


def _claim(flag: str, taken: set[str]) -> None:
    if flag in taken:
        raise TypeError(f"{flag}: two settings (or a setting and a command option) give this flag")
    taken.add(flag)


def unknown(tab: Table, name: str, unused: tuple[str, ...] = ()) -> str:
    """ "unknown key [t] x (did you mean ...; keys: ...)" in one line, of the keys the command uses."""
    names = [k.dashed for k in tab.keys.values() if k.name not in unused]
    dashed = name.replace("_", "-")
    close = difflib.get_close_matches(dashed, names, n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"unknown key [{tab.name}] {dashed} ({hint}keys: {', '.join(names)})"


def _deprecated(old: str, new: str) -> None:
    """One line per old spelling (a resolution reads each file key, variable and flag once)."""
    log.warning("%s is deprecated: use %s", old, new)


class _Flag(argparse.Action):
    """Records a settings flag as given, with its spelling, in ``namespace.settings_flags``
    (resolution coerces it, so that a bad value names the flag like a bad file value)."""

    def __init__(self, option_strings: list[str], dest: str, key: Key, deprecated: bool = False,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)
        self.key = key
        self.deprecated = deprecated

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        flags = namespace.__dict__.setdefault("settings_flags", {})
        slot = (self.key.table, self.key.name)
        value: Any = self.const if self.nargs == 0 else values
        if self.key.kind == "list":
            previous = flags.get(slot, ([], "", False))[0]
            value = [*previous, values]
        flags[slot] = (value, option_string or "", self.deprecated)


def read_toml(path: Path) -> dict[str, Any]:
    """A config file's TOML document; ValueError with a one-line reason naming the file (a
    file that cannot be read is an error of exit 1, not a usage error)."""
    import tomllib  # only where a file is read: 5-8 ms of every command's start-up

    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read config: {' '.join(str(exc).split())}") from None
