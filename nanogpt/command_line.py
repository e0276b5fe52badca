"""A script's settings: each declared with setting() (its default, meaning and limits), read from config
files and --key=value overrides by load_config, checked, and listed by --help. It imports no torch, so a
prepare script starts in a fraction of a second.

A config file is plain Python that assigns some of the keys, e.g. `batch_size = 32`. Files and overrides
apply left to right, each checked against the key's type; an unknown key is an error naming the closest
known one. Each setting may also declare the interval its number must lie in or the values its text may
take; load_config refuses anything else in one sentence naming the key, so every script checks every
setting before it loads anything. Checking a setting changes nothing outside it: what a setting chooses
for the whole process is applied later, by the script's set-up.
"""

import difflib
import math
import types
import typing
from dataclasses import field, fields
from pathlib import Path

from nanogpt.errors import HelpRequested, SettingError
from nanogpt.files import read_utf8

LARGEST_INT = 2**62  # beyond this a count overflows torch's 64-bit integers somewhere


def setting(default, help, within=None, choices=None):
    """A config key: its default, what it means, and what it may be: `within` an interval such as
    "[0, 1)" for a number, `choices` the values a text may take."""
    return field(default=default, metadata={"help": help, "within": within, "choices": choices})


def unwrap_optional(hint):
    """Optional[X] -> (X, True); X -> (X, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _type_name(hint):
    base, optional = unwrap_optional(hint)
    return base.__name__ + (" or None" if optional else "")


def parse_text(key, text, hint):
    """Turn the text of a --key=value override into the key's type."""
    base, optional = unwrap_optional(hint)
    if optional and text == "None":
        return None
    try:
        if base is bool:
            lowered = text.lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise ValueError
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        raise SettingError(f"--{key} expects {_type_name(hint)}, got {text!r}") from None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]  # quotes kept by the shell, as in --init_from="'gpt2'"
    return text


def check_value(key, value, hint, where):
    """Check a value set in a config file against the key's type. An int is fine where a float is wanted."""
    base, optional = unwrap_optional(hint)
    if value is None and optional:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    raise SettingError(f"{key} in {where} must be {_type_name(hint)}, got {value!r}")


def _unknown_key(key, config_cls, where):
    names = [f.name for f in fields(config_cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]}?" if close else "; run with --help to list the keys"
    return SettingError(f"unknown config key {key!r} in {where}{hint}")


def _read_config_file(path):
    """Run a config file and return the settings it assigns (module-level names without a leading _)."""
    p = Path(path)
    if p.is_dir():
        raise SettingError(
            f"config file {path} is a folder; name a file in it (config files live in config/, e.g. "
            "config/train_shakespeare_char.py)"
        )
    if not p.is_file():
        raise SettingError(
            f"config file {path} not found (config files live in config/, e.g. config/train_shakespeare_char.py)"
        )
    namespace, source = {}, read_utf8(p, "config file")
    try:
        exec(compile(source, str(p), "exec"), namespace)
    except (Exception, SystemExit) as e:  # SystemExit: a config that calls exit() is not a config
        raise SettingError(f"config file {path} could not be run: {type(e).__name__}: {e}") from None
    return {
        k: v
        for k, v in namespace.items()
        if not k.startswith("_") and not isinstance(v, (types.ModuleType, types.FunctionType, type))
    }


def help_text(config_cls, script):
    lines = [
        f"usage: python {script} [config/file.py ...] [--key=value ...]",
        "",
        "Config files and overrides apply left to right. Keys, defaults and meanings:",
    ]
    hints = typing.get_type_hints(config_cls)
    for f in fields(config_cls):
        lines.append(f"  --{f.name}={f.default!r}  ({_type_name(hints[f.name])})")
        lines.append(f"      {f.metadata['help']}")
    return "\n".join(lines)


def load_config(config_cls, argv, script="train.py", ignored_keys=()):
    """Build a config from defaults, then each config file / --key=value in argv, in order.
    ignored_keys: keys a config file may also set, which are then left out (bench.py times the step of
    a training config, which sets train.py's keys)."""
    if any(a in ("-h", "--help") for a in argv):
        raise HelpRequested(help_text(config_cls, script))
    hints = typing.get_type_hints(config_cls)
    values = {}
    for arg in argv:
        if not arg.startswith("--"):
            for key, value in _read_config_file(arg).items():
                if key not in hints and key in ignored_keys:
                    continue
                if key not in hints:
                    raise _unknown_key(key, config_cls, arg)
                values[key] = check_value(key, value, hints[key], arg)
            continue
        if "=" not in arg and arg[2:] in hints and unwrap_optional(hints[arg[2:]])[0] is bool:
            arg += "=True"  # a switch on its own turns it on: --chat
        if "=" not in arg:
            raise SettingError(f"override {arg} needs a value: write it as {arg}=VALUE")
        key, text = arg[2:].split("=", 1)
        if key not in hints:
            raise _unknown_key(key, config_cls, "the command line")
        values[key] = parse_text(key, text, hints[key])
    cfg = config_cls(**values)
    check_settings(cfg)
    return cfg


def describe_interval(within):
    """'[1, inf)' -> 'at least 1'; '(0, 1]' -> 'above 0 and at most 1'."""
    low, high = (text.strip() for text in within[1:-1].split(","))
    parts = []
    if low != "-inf":
        parts.append(("at least " if within[0] == "[" else "above ") + low)
    if high != "inf":
        parts.append(("at most " if within[-1] == "]" else "below ") + high)
    return " and ".join(parts)


def in_interval(value, within):
    low, high = (float(text) for text in within[1:-1].split(","))
    above_low = value >= low if within[0] == "[" else value > low
    below_high = value <= high if within[-1] == "]" else value < high
    return above_low and below_high  # False for NaN


def check_settings(cfg):
    """Refuse any setting outside what its key declares, in one sentence naming the key and what works.
    Every float must be finite; a text whose default is not empty must not be empty."""
    for f in fields(cfg):
        value, within, choices = getattr(cfg, f.name), f.metadata.get("within"), f.metadata.get("choices")
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingError(f"{f.name} must be a finite number, got {value}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= LARGEST_INT:
            raise SettingError(f"{f.name} is too large ({value}); it must be below 2**62")
        if within and not in_interval(value, within):
            raise SettingError(f"{f.name} must be {describe_interval(within)}, got {value}")
        if choices and value not in choices:
            raise SettingError(f"unknown {f.name} {value!r}; use {', '.join(choices[:-1])} or {choices[-1]}")
        if isinstance(value, str) and f.default and not value:
            raise SettingError(f"{f.name} cannot be empty (its default is {f.default!r})")
