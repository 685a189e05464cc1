"""docs/settings.md, written from the settings table: `python -m hardserve.settings_doc >
docs/settings.md`. tests/unit/test_settings.py holds the committed file equal to render()."""

from __future__ import annotations

import json
import sys

from hardserve.settings import (
    CONFIG_ENV,
    LIMIT_SETTINGS,
    OFF_AT_ZERO,
    RISKS,
    SETTINGS,
    Setting,
    boolean,
    toml_type,
    toml_value,
)

_INTRO = f"""\
# Settings

<!-- Written by `python -m hardserve.settings_doc > docs/settings.md` from the table in
src/hardserve/settings.py; tests/unit/test_settings.py fails when this file is out of date. -->

Every setting is declared once, in `src/hardserve/settings.py`, and can be given three ways:
a command-line flag (`--body-max-bytes 1048576`), an environment variable
(`HARDSERVE_BODY_MAX_BYTES=1048576`) or a key of the TOML config file
(`body_max_bytes = 1048576`). The limits are explained in [limits.md](limits.md).

## Where a value comes from

The strongest source wins, in this order:

1. the command line (`--workers 4`);
2. the environment (`HARDSERVE_WORKERS=4`);
3. the config file named by `--config FILE` or, without it, `{CONFIG_ENV}`;
4. the default.

For `bind` alone, a default comes from `PORT` when it is set (`0.0.0.0:$PORT`, the container
convention); a `bind` from any of the three sources wins over it.

`hardserve check-config` shows each effective value with its source: `default`,
`file:PATH`, `env:HARDSERVE_NAME` (or `env:PORT`) or `cli:--flag`. In Python,
`hardserve.settings.resolve(values, env)` returns the same: `.config` (what `load()`
returns) and `.sources`, a mapping of every setting name to its source.

## The config file

```toml
# hardserve.toml: hardserve --config hardserve.toml myapp:app
bind = ["127.0.0.1:8000", "unix:/run/myapp/http.sock"]
unix_mode = "0660"
workers = 4                      # or "auto"
threads = 16
forwarded_allow_ips = "10.0.0.0/8, unix"
body_max_bytes = 1048576
keepalive_timeout_s = 5          # an integer is accepted where a number is expected
```

- The keys are the setting names below, at the top level of the file. There is no
  `[hardserve]` table (nor any other): a file with one is refused, and so is a key that is not a
  setting (the error names the file, the key and the closest setting name).
- Types are strict: an integer setting takes a TOML integer, not `"4"`; a yes/no setting takes
  `true` or `false`; a repeatable setting (`bind`, `pythonpath`) takes an array of strings
  (an empty array counts as not given). Only settings whose own parser reads text take a
  string for it: `workers = "auto"`, and the octal modes `unix_mode = "0660"` and
  `umask = "0022"` (always strings: a TOML integer `660` is not the mode `0660`).
- Relative paths, in values (`chdir`, `pid_file`, `unix:` binds) as in `--config` itself,
  are relative to the working directory, as on the command line.
- A file that cannot be read, is not UTF-8 or is not valid TOML (the error gives the line) is
  an error like a bad value: `hardserve` exits with status 3, `hardserve check-config` with 1.

## hardserve check-config

```sh
hardserve check-config [--config FILE] [--format text|json] [any setting flag] [MODULE:APP]
```

Prints every setting with its value (as the config file writes it) and its source, as aligned
text or, with `--format json`, one object (`config_file`, `config_file_source`, `app`,
`settings`: name -> `value` and `source`, `findings`: `level`, `id`, `settings`, `message`).
Then it reports risky choices. It binds nothing and imports no app: a `MODULE:APP` given is
only checked for its form. Exit status: 0 with or without findings; 1 when a value, a key,
the config file, a bind address or `MODULE:APP` is wrong (one line on stderr naming the key
and its source); 2 for a flag it does not know.

| Finding | Level | When |
| --- | --- | --- |
"""

_LIMITS_INTRO = """
## Limits

Every size, count and time ceiling; why each default, and what the peers use, is in
[limits.md](limits.md).
"""


def render() -> str:
    """The whole of docs/settings.md."""
    parts = [_INTRO]
    parts += [f"| `{id_}` | {level} | {when} |\n" for id_, (level, when) in RISKS.items()]
    parts.append("\n## Server settings\n")
    parts += [_section(setting) for setting in SETTINGS]
    parts.append(_LIMITS_INTRO)
    parts += [_section(setting) for setting in LIMIT_SETTINGS]
    return "".join(parts)


def _section(setting: Setting) -> str:
    flag = setting.flag if setting.type is boolean else f"{setting.flag} {_metavar(setting)}"
    lines = [
        f"\n### `{setting.name}`\n",
        f"\n{setting.help}\n\n",
        f"- Flag: `{flag}`" + (", repeatable" if setting.multiple else "") + "\n",
        f"- Environment: `{setting.env_var}`" + _env_note(setting) + "\n",
        f"- File: `{setting.name}`, {_type(setting)}\n",
        f"- Default: {_default(setting)}\n",
    ]
    limits = _range(setting)
    if limits:
        lines.append(f"- Range: {limits}\n")
    return "".join(lines)


def _metavar(setting: Setting) -> str:
    if setting.choices:
        return "[" + "|".join(setting.choices) + "]"
    return setting.metavar or "TEXT"


def _env_note(setting: Setting) -> str:
    if setting.multiple:
        return " (comma-separated)"
    if setting.type is boolean:
        return " (1, true, yes, on / 0, false, no, off)"
    return ""


def _type(setting: Setting) -> str:
    if setting.choices:
        return "one of " + ", ".join(f'`"{choice}"`' for choice in setting.choices)
    return toml_type(setting).replace('("0660")', '(`"0660"`)').replace('"auto"', '`"auto"`')


def _default(setting: Setting) -> str:
    if setting.name == "bind":
        return '`["127.0.0.1:8000"]`, or `["0.0.0.0:$PORT"]` when `PORT` is set'
    value = toml_value(setting, setting.default)
    if value is None:
        return "not set"
    return f"`{json.dumps(value)}`"


def _range(setting: Setting) -> str:
    if setting.choices or (setting.minimum is None and setting.maximum is None):
        text = ""
    else:
        text = _bounds(setting)
    if setting.name in OFF_AT_ZERO:
        text += "; 0 turns it off"
    return text


def _bounds(setting: Setting) -> str:
    low = _bound(setting, setting.minimum)
    # A float's maximum is threading's longest wait (about 292 years): not a range anyone
    # meets, only a guard against a timeout threading refuses.
    if setting.type is float:
        return f"at least {low}, finite"
    if setting.maximum is None:
        return f"at least {low}"
    return f"{low} to {_bound(setting, setting.maximum)}"


def _bound(setting: Setting, bound: float | None) -> str:
    value = toml_value(setting, bound)
    if isinstance(value, str):
        return f'`"{value}"`'
    return str(value) if isinstance(value, int) else f"{value:g}"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
