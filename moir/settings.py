"""`--settings JSON`: how the workflow hands a stage its settings, in one form.

Every stage's command line takes its paths as options and its settings either as options (by hand) or as one JSON
object (`--settings '{"batch_size": 8, ...}'`, what the workflow passes: moir/plan.py builds it). Each key of the
object is the destination of one of the parser's options and its value is checked as that option would check it
(type, choices, flags are booleans); an unknown key, a wrong type or a path option is refused, naming the key.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def json_object(text: str) -> dict:
    """argparse type of an option that takes a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error})") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def add_settings_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", type=json_object, metavar="JSON",
                        help="the settings as one JSON object whose keys are this command's option names "
                             "(with _ for -); what the workflow passes")


def _check(action: argparse.Action, key: str, value):
    """The value of `key` as the option `action` would have parsed it; ValueError naming the key otherwise."""
    if value is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise ValueError(f"--settings: {key} must be true or false, got {value!r}")
        return value
    kind = action.type
    if kind is json_object:
        if not isinstance(value, dict):
            raise ValueError(f"--settings: {key} must be a JSON object, got {value!r}")
        return value
    if kind is Path:
        raise ValueError(f"--settings: {key} is a path: pass it as --{key.replace('_', '-')}")
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise ValueError(f"--settings: {key} must be a single value, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise ValueError(f"--settings: {key} must be an integer, got {value!r}")
    if kind is float:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"--settings: {key} must be a finite number, got {value!r}")
        value = float(value)
    elif kind is None and not isinstance(value, str):
        raise ValueError(f"--settings: {key} must be a string, got {value!r}")
    elif kind not in (None, int, float):
        try:
            value = kind(str(value))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
            raise ValueError(f"--settings: {key}: {error}") from error
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"--settings: {key} must be one of {sorted(action.choices)}, got {value!r}")
    return value


def _chosen_parsers(parser: argparse.ArgumentParser, args: argparse.Namespace | None):
    """The parser and, through its sub-commands, the sub-parsers that `args` chose (all of them without args)."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if args is None or getattr(args, action.dest, None) == name:
                    yield from _chosen_parsers(sub, args)


def apply_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Set each option named in `args.settings` from it. A parser error (exit 2) names a bad key."""
    parsers = list(_chosen_parsers(parser, args))
    actions = {action.dest: (action, p) for p in parsers for action in p._actions if action.option_strings}
    settings = getattr(args, "settings", None) or {}
    last = parsers[-1]
    for key, value in sorted(settings.items()):
        if key not in actions or key in ("settings", "help"):
            known = ", ".join(sorted(set(actions) - {"help", "settings"}))
            last.error(f"--settings: unknown key {key!r} (known: {known})")
        try:
            setattr(args, key, _check(actions[key][0], key, value))
        except ValueError as error:
            last.error(str(error))
    for action, owner in actions.values():
        if action.required and getattr(args, action.dest, None) is None:
            owner.error(f"the following arguments are required: {'/'.join(action.option_strings)} "
                        "(or its key in --settings)")
    return args


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """parse_args, then --settings applied: an option it may fill is checked for presence after both."""
    required = [action for p in _chosen_parsers(parser, None) for action in p._actions
                if action.required and action.option_strings]
    for action in required:
        action.required = False
    try:
        args = parser.parse_args(argv)
    finally:
        for action in required:
            action.required = True
    return apply_settings(parser, args)
