"""Which names are settings: a misspelt one is refused instead of silently ignored.

The valid names come from the Settings model itself (a field added later is known at
once): ``QUANTSHIFT_<NAME>`` or the field's own alias (``SHADOW_MODE``, ``APCA_*``, ...) in
the environment and the env file, the short names and the ``[risk]``/``[trigger]`` tables
in the TOML file. Only a name is ever shown, never a value: it may be a secret.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import AliasChoices

from quantshift.errors import ConfigError
from quantshift.settings import ENV_PREFIX, TOML_TABLES, Settings

# QUANTSHIFT_ variables that the model does not read, but the project does: where the env
# file is (config.py), the scripts' virtual environment and system packages (scripts/).
NOT_IN_THE_MODEL = frozenset({
    "QUANTSHIFT_ENV_FILE",
    "QUANTSHIFT_VENV",
    "QUANTSHIFT_NO_SYSTEM_PACKAGES",
    "QUANTSHIFT_SYSTEM_PACKAGES",
})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


@cache
def env_names() -> frozenset[str]:
    """Every name the environment and the env file may hold, upper case."""
    names = set(NOT_IN_THE_MODEL)
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):  # read by its own name(s), not the prefix
            names.update(str(choice).upper() for choice in alias.choices)
        else:
            names.add(ENV_PREFIX + field.upper())
    return frozenset(names)


@cache
def toml_names() -> dict[str, frozenset[str]]:
    """The TOML file's names: ``""`` for the top level, then each table's own keys."""
    top = set(TOML_TABLES)
    for field, info in Settings.model_fields.items():
        top.add(field)
        if isinstance(info.validation_alias, AliasChoices):
            top.update(str(choice) for choice in info.validation_alias.choices)
    out = {"": frozenset(top)}
    for table in TOML_TABLES:
        out[table] = frozenset(f.removeprefix(f"{table}_") for f in Settings.model_fields
                               if f.startswith(f"{table}_"))
    return out


def _unknown(setting: str, name: str, valid: Iterable[str], where: str) -> ConfigError:
    """``name`` is unknown: ``setting`` names it for the operator, ``where`` is its file."""
    place = f" in {where}" if where else ""
    if not _NAME.match(name):  # not a name at all: perhaps a pasted secret, so not shown
        return ConfigError(where or "settings", "a key that is not a setting name (not "
                                                "shown: it may be a secret)")
    # The prefix where it does not belong (QUANTSHIFT_SHADOW_MODE), or missing (PHASE).
    close = [n for n in (name.removeprefix(ENV_PREFIX), ENV_PREFIX + name) if n in valid]
    close = close or difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else " (`quantshift config` lists them)"
    return ConfigError(setting, f"unknown setting{place}{hint}")


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse an unknown ``QUANTSHIFT_*`` variable; other programs' variables are theirs."""
    valid = env_names()
    for key in sorted(environ):
        upper = key.upper()  # pydantic-settings reads the environment case-insensitively
        if upper.startswith(ENV_PREFIX) and upper not in valid:
            raise _unknown(key, upper, valid, "")


def check_env_file(entries: Mapping[str, str | None], path: Path) -> None:
    """Refuse an unknown name in the env file: every line of it is for QuantShift."""
    valid = env_names()
    for key, value in entries.items():
        if value is None:  # a line without "=": a value pasted on its own line, perhaps
            raise ConfigError(str(path), "a line that is not NAME=VALUE (not shown: it "
                                         "may be a secret)")
        if key.upper() not in valid:
            raise _unknown(key, key.upper(), valid, str(path))


def check_toml(data: Mapping[str, Any], path: Path) -> None:
    """Refuse an unknown key of the bot's TOML file, at the top or in a known table."""
    names = toml_names()
    for key, value in data.items():
        if key not in names[""]:
            raise _unknown(key, key, names[""], str(path))
        if key in TOML_TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}]", f"expected a table in {path}, e.g. [{key}]")
            for sub in value:
                if sub not in names[key]:
                    raise _unknown(f"[{key}] {sub}", sub, names[key], str(path))
