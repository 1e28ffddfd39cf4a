"""Named config profiles in a TOML file, ``SHEEPDOG_<KEY>`` environment overrides, and
where each setting in effect came from.

The one place for: where the config file is, how its profiles layer, how the
environment is read, secret references, and each value's source. Settings in
effect come from, lowest first::

    built-in defaults   every key's default (config.Settings)
    [default]           the file's default profile, when the file has one
    [NAME]              the profile asked for by name: map(f, args, "NAME")
    SHEEPDOG_<KEY>      one environment variable per Settings field
    dict                the config dict passed to map (its keys win)

A request's settings, once kept in a dbfile, are read back as they were
(``Settings.from_public``): neither profiles nor the environment apply then.

Environment values are text, read by the key's type: whole numbers and
numbers as Python reads them (``8``, ``2.5``), booleans as ``true``/``false``
or ``1``/``0``, option lists (``ge_opts``, ``slurm_opts``) as a JSON array
when the text starts with ``[`` and else as one option, and an empty string
as None for the keys that may be None (no options, for option lists).
Only ``SHEEPDOG_`` + an upper-cased field name counts: ``SHEEPDOG_HOME``,
``SHEEPDOG_CONFIG``, ``SHEEPDOG_TASK_ID`` and the like mean other things.

In the file, any string value may be a secret reference: ``{ env = "VAR" }``
(that environment variable's value) or ``{ file = "~/.sheepdog/pw" }`` (the
file's content, stripped; relative to the config file's directory; refused
when other users may read it). The profile-only keys ``broker_password`` and
``rq_password`` put a password into ``broker_url`` / ``rq_url``, which then
need hold none. A URL from a later layer that carries its own password keeps it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sheepdog.broker.urls import redact, split
from sheepdog.errors import ConfigError
from sheepdog.submitter import config as keys
from sheepdog.submitter.config import Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project's venv is 3.11
    import tomli as tomllib

ENV_PREFIX = "SHEEPDOG_"
#: The environment variable that names the config file, instead of the platform's place.
CONFIG_ENV = "SHEEPDOG_CONFIG"
#: The profile every other one starts from.
DEFAULT_PROFILE = "default"
#: Keys a profile may hold besides Settings fields: the password for each URL key.
PASSWORD_KEYS = {"broker_password": "broker_url", "rq_password": "rq_url"}
_URL_KEYS = ("broker_url", "rq_url")

#: Layers, lowest first; a key's value comes from the highest layer that sets it.
_DEFAULTS, _FILE_DEFAULT, _FILE_NAMED, _ENV, _DICT = range(5)


@dataclass(frozen=True)
class Source:
    """One key of the settings in effect: its value (passwords masked) and where it came from.

    ``origin`` is ``default``, ``<file> [profile] line N``, ``env SHEEPDOG_<KEY>`` or ``dict``.
    """

    key: str
    value: Any
    origin: str


def config_file() -> Path:
    """``$SHEEPDOG_CONFIG``, else ``config.toml`` in the platform's user config directory."""
    configured = os.environ.get(CONFIG_ENV)
    if configured:
        return Path(configured).expanduser()
    return _user_config_dir() / "sheepdog" / "config.toml"


def _user_config_dir() -> Path:
    if sys.platform == "win32":
        appdata = os.environ.get("APPDATA")
        return Path(appdata) if appdata else Path.home() / "AppData" / "Roaming"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support"
    xdg = os.environ.get("XDG_CONFIG_HOME")  # the XDG spec says to ignore a relative one
    return Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"


def env_names() -> tuple[str, ...]:
    """The environment variables that override settings, one per Settings field."""
    return tuple(ENV_PREFIX + f.name.upper() for f in fields(Settings))


def resolve(config: Mapping[str, Any] | Settings | str | None = None) -> Settings:
    """The settings in effect for ``config``: a Settings as it is, else the layers above.

    A str names a profile of the config file; a dict's keys win over everything.
    """
    if isinstance(config, Settings):
        return config
    settings = Settings(**_gather(config).values)
    settings.check()
    return settings


def explain(config: Mapping[str, Any] | Settings | str | None = None) -> list[Source]:
    """Every key in effect for ``config`` and where it came from, in Settings' order.

    Values are not checked against each other here (``resolve`` does), so a
    list can be shown even for settings that are wrong together.
    """
    if isinstance(config, Settings):
        values = {f.name: getattr(config, f.name) for f in fields(Settings)}
        origins = dict.fromkeys(values, "Settings")
    else:
        found = _gather(config)
        values, origins = found.values, found.origins
    return [Source(f.name, _masked(f.name, values.get(f.name, f.default)),
                   origins.get(f.name, "default")) for f in fields(Settings)]


def dbfile(profile: str | None = None) -> str:
    """The dbfile of ``profile`` (else of the default profile), with the environment applied.

    For reading requests back: the other settings need not make sense together.
    """
    value: str = _gather(profile).values.get("dbfile", Settings().dbfile)
    return value


def profile(name: str) -> dict[str, Any]:
    """The keys profile ``name`` itself sets, checked, its passwords joined into the URLs."""
    found = _Layers()
    for key, value, origin in _profile_entries(_load_required(name), name):
        found.set(key, value, origin, _FILE_NAMED)
    found.join_passwords()
    return found.values


def _masked(key: str, value: Any) -> Any:
    return redact(value) if key in _URL_KEYS and value is not None else value


# -- the layers ------------------------------------------------------------------


@dataclass
class _Layers:
    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    layers: dict[str, int] = field(default_factory=dict)
    #: url key -> (password, origin, layer)
    passwords: dict[str, tuple[str, str, int]] = field(default_factory=dict)

    def set(self, key: str, value: Any, origin: str, layer: int) -> None:
        if key in PASSWORD_KEYS:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{key} must be a non-empty string (from {origin})")
            self.passwords[PASSWORD_KEYS[key]] = (value, origin, layer)
            return
        try:
            self.values[key] = keys.coerce(key, value)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from {origin})") from None
        self.origins[key] = origin
        self.layers[key] = layer

    def join_passwords(self) -> None:
        for url_key, (password, origin, layer) in self.passwords.items():
            url = self.values.get(url_key)
            pw_key = next(k for k, v in PASSWORD_KEYS.items() if v == url_key)
            if url is None:
                raise ConfigError(
                    f"{pw_key} is set ({origin}) but {url_key} is not: set {url_key} (without"
                    " its password) in the profile, e.g. 'redis://headnode:6379/0'"
                )
            if split(url).password is not None:
                if self.layers[url_key] > layer:
                    continue  # a later layer's complete URL wins, as any later value does
                if self.layers[url_key] == layer:
                    raise ConfigError(
                        f"{url_key} holds a password and {pw_key} is set too ({origin}):"
                        f" give the password once, as {pw_key}"
                    )
            self.values[url_key] = _with_password(url, password)
            self.origins[url_key] += f", password from {origin}"


def _with_password(url: str, password: str) -> str:
    parts = split(url)
    user = parts.username or ""  # as the URL has it: already %-quoted
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    rest = url[len(parts.scheme) + 3 + len(parts.netloc):]  # after 'scheme://netloc'
    return f"{parts.scheme}://{netloc}{rest}"


def _gather(config: Mapping[str, Any] | str | None) -> _Layers:
    name = config if isinstance(config, str) else None
    found = _Layers()
    for layer, key, value, origin in _file_entries(name):
        found.set(key, value, origin, layer)
    for key, value, origin in _env_entries():
        found.set(key, value, origin, _ENV)
    if isinstance(config, Mapping):
        keys.refuse_unknown(config)
        for key, value in config.items():
            found.set(key, value, "dict", _DICT)
    found.join_passwords()
    return found


# -- the environment -------------------------------------------------------------


def _env_entries() -> list[tuple[str, Any, str]]:
    entries = []
    for f in fields(Settings):
        var = ENV_PREFIX + f.name.upper()
        text = os.environ.get(var)
        if text is not None:
            entries.append((f.name, _env_value(f.name, text, var), f"env {var}"))
    return entries


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def _kind(name: str) -> tuple[type, bool]:
    """The type of key ``name`` (int, float, bool, str, tuple) and whether None is allowed."""
    hint = _hints()[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    none_ok = type(None) in typing.get_args(hint)
    base = args[0] if none_ok else hint
    return typing.get_origin(base) or base, none_ok


def _env_value(name: str, text: str, var: str) -> Any:
    kind, none_ok = _kind(name)
    if kind is tuple:
        return _env_options(text, var)
    if not text.strip() and none_ok:
        return None
    if kind is bool:
        word = text.strip().lower()
        if word not in ("true", "false", "1", "0"):
            raise ConfigError(f"{var} must be true or false (or 1 or 0), got {text!r}")
        return word in ("true", "1")
    if kind in (int, float):
        try:
            return int(text) if kind is int else float(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ConfigError(f"{var} must be {what}, got {text!r}") from None
    return text


def _env_options(text: str, var: str) -> Any:
    if not text.strip():
        return None  # no options
    if not text.lstrip().startswith("["):
        return [text]  # one option, spaces and all: '-l h_rt=1:00:00'
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f"{var} starts with '[' but is not a JSON array of strings ({exc}); write e.g."
            f' {var}=\'["-l h_rt=1:00:00", "-r y"]\''
        ) from None


# -- the file --------------------------------------------------------------------


@dataclass(frozen=True)
class _File:
    path: Path
    text: str
    profiles: dict[str, dict[str, Any]]

    def where(self, name: str, key: str | None = None) -> str:
        line = _line_of(self.text, name, key) if key is not None else None
        return f"{self.path} [{name}]" + (f" line {line}" if line else "")


def _load(path: Path) -> _File | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid TOML: {exc}") from None
    loose = [key for key, value in data.items() if not isinstance(value, dict)]
    if loose:
        raise ConfigError(
            f"the config file {path} has {', '.join(map(repr, loose))} outside a profile:"
            " every key belongs to a profile table; put it below a [default] line (settings"
            " every profile starts from) or a [NAME] line of its own"
        )
    return _File(path, text, data)


def _load_required(name: str) -> _File:
    path = config_file()
    found = _load(path)
    if found is None:
        raise ConfigError(
            f"profile {name!r} was asked for, but there is no config file {path}: write one"
            f" with a [{name}] table (docs/configuration.md, Profiles), or point {CONFIG_ENV}"
            " at yours"
        )
    if name not in found.profiles:
        choices = ", ".join(found.profiles) or "none"
        raise ConfigError(f"no profile {name!r} in {path}; its profiles: {choices}")
    return found


def _file_entries(name: str | None) -> list[tuple[int, str, Any, str]]:
    found = _load_required(name) if name is not None else _load(config_file())
    if found is None:
        return []
    entries = []
    for layer, wanted in ((_FILE_DEFAULT, DEFAULT_PROFILE), (_FILE_NAMED, name)):
        if wanted is not None and wanted in found.profiles:
            entries += [(layer, *entry) for entry in _profile_entries(found, wanted)]
    return entries


def _profile_entries(found: _File, name: str) -> list[tuple[str, Any, str]]:
    """The keys of profile ``name`` with their values, secret references read."""
    table = found.profiles[name]
    known = {f.name for f in fields(Settings)} | set(PASSWORD_KEYS)
    unknown = {key: value for key, value in table.items() if key not in known}
    if unknown:
        try:
            keys.refuse_unknown(unknown)
        except ConfigError as exc:
            where = found.where(name, next(iter(unknown)))
            raise ConfigError(f"{where}: {exc}") from None
    entries = []
    for key, value in table.items():
        origin = found.where(name, key)
        value, note = _dereference(value, origin, found.path.parent)
        if value == "" and key not in PASSWORD_KEYS and _kind(key)[1]:
            value = None  # TOML has no null: "" resets a key that may be None
        entries.append((key, value, origin + note))
    return entries


_HEADER = re.compile(r"\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")


def _line_of(text: str, name: str, key: str) -> int | None:
    """The line of ``key`` in table ``[name]`` (tomllib keeps no line numbers)."""
    bare = re.escape(key)
    assignment = re.compile(rf"\s*(?:{bare}|\"{bare}\"|'{bare}')\s*=")
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            inside = header.group(1).strip("\"'") == name
        elif inside and assignment.match(line):
            return number
    return None


def _dereference(value: Any, origin: str, base: Path) -> tuple[Any, str]:
    """A secret reference's value and a note for its origin; any other value as it is."""
    if not isinstance(value, dict):
        return value, ""
    kind, target = next(iter(value.items()), ("", None))
    if len(value) != 1 or kind not in ("env", "file") or not isinstance(target, str):
        raise ConfigError(
            f"{origin}: a table value must be a secret reference, {{ env = \"VAR\" }} or"
            f" {{ file = \"~/.sheepdog/password\" }}; got one with key(s)"
            f" {', '.join(map(repr, value))}"
        )
    if kind == "env":
        secret = os.environ.get(target)
        if secret is None:
            raise ConfigError(f"{origin} refers to environment variable {target}, which is"
                              " not set")
        return secret, f" (env {target})"
    path = base / Path(target).expanduser()
    return _read_secret(path, origin), f" (file {path})"


def _read_secret(path: Path, origin: str) -> str:
    try:
        if os.name == "posix" and path.stat().st_mode & 0o077:
            raise ConfigError(
                f"{origin} refers to {path}, which other users may read or change (mode"
                f" {path.stat().st_mode & 0o777:04o}); make it private: chmod 600 {path}"
            )
        secret = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{origin} refers to {path}, which does not exist") from None
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"{origin} refers to {path}, which cannot be read: {exc}") from None
    if not secret:
        raise ConfigError(f"{origin} refers to {path}, which is empty")
    return secret
