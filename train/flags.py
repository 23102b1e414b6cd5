"""Command-line parsing shared by every program in train/: absl flags, `--config
configs/NAME.py[:variant]` with `--config.a.b=value` overrides (ml_collections, built on absl).

Each program defines its flags on a `flags.FlagValues()` of its own, made afresh by every
`parse_flags` call, never on the global `flags.FLAGS`: several programs import into one process
(pytest) without clashing names, and `main(argv)` runs in-process as often as wanted.

    def _define(fv):
        flags.DEFINE_string("workdir", None, "The run's directory.", flag_values=fv, required=True)

    def main(argv):
        args = parse_flags(argv, _define, __doc__, config=True)  # args.config, args.workdir

Every mistake (unknown flag, bad value, missing required flag, an argument that is not a flag,
a bad --config file or variant, an error raised inside get_config, a bad --config.x=v) is one
line `error: ...` on stderr and exit status 2. `--help` (or `--helpfull`, `-h`) prints the
program's docstring and flags, exit status 0.
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import flags
from ml_collections import config_flags

HELP = ("--help", "-help", "-h", "--helpfull", "-helpfull", "--helpshort", "-helpshort", "-?")
_REQUIRED = re.compile(r"^flag --([\w.-]+)=None: Flag --\1 must have a value other than None\.$")


def parse_flags(
    argv: Sequence[str], define: Callable[[flags.FlagValues], None], doc: str = "", *, config: bool = False
) -> types.SimpleNamespace:
    """Parses `argv` (the whole command line, program name first, as absl expects) with the flags
    `define(fv)` puts on a fresh FlagValues; `config=True` adds the required `--config` file flag,
    whose `--config.x=v` overrides ml_collections reads from this same `argv`. Returns the values
    by flag name, '-' read as '_' (`--batch-size` is `.batch_size`). Exits (SystemExit, in-process
    too) with status 0 after `--help`, with status 2 and one line `error: ...` after a mistake."""
    argv = [str(a) for a in argv]
    fv = flags.FlagValues()
    if config:
        config_flags.DEFINE_config_file(
            "config", None, "Config file, optionally with ':variant'.", flag_values=fv, lock_config=True, sys_argv=argv
        )
        flags.mark_flag_as_required("config", flag_values=fv)
    define(fv)
    args = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
    if any(a in HELP for a in args):
        print(help_text(fv, doc))
        sys.exit(0)
    try:
        rest = fv(argv)
        if config:
            hasattr(fv["config"].value, "lock")  # a config file that failed to load raises its OSError here
    except flags.Error as e:
        fail(_flag_error(e))
    except Exception as e:
        if not config:
            raise
        fail(f"bad --config: {_config_error(e)}")
    if len(rest) > 1:
        fail(f"unexpected arguments {rest[1:]}: every argument is a --flag (--help lists them).")
    return types.SimpleNamespace(**{name.replace("-", "_"): fv[name].value for name in fv if "." not in name})


def fail(message: str, code: int = 2) -> NoReturn:
    """One line `error: MESSAGE` on stderr, then exit with `code`."""
    print("error: " + " ".join(str(message).split("\n")), file=sys.stderr)
    sys.exit(code)


def help_text(fv: flags.FlagValues, doc: str) -> str:
    """The program's docstring, then its flags as absl describes them."""
    lines = [line for line in fv.get_help(include_special_flags=False).splitlines() if line.startswith(" ")]
    return f"{(doc or '').strip()}\n\nflags:\n" + "\n".join(lines)


def _flag_error(e: flags.Error) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):  # an error raised inside get_config
        lines = [lines[0], lines[-1]]
    message = " ".join(lines)
    required = _REQUIRED.match(message)
    if required:
        return f"--{required.group(1)} is required (--help lists the flags)."
    if isinstance(e, flags.UnrecognizedFlagError):
        return f"{message.rstrip(' ?')} (--help lists the flags)."
    return message


def _config_error(e: Exception) -> str:
    if isinstance(e, OSError):  # the file is missing or unreadable: its last line says why
        lines = [line.strip() for line in str(e.__cause__ or e).splitlines() if line.strip()]
        return lines[-1] if lines else type(e).__name__
    message = " ".join(str(e).split("\n"))
    if isinstance(e, (AttributeError, KeyError)):  # ConfigDict's, of a key: "'bacth_size'\nDid you mean ..."
        message = message.strip("'\"").replace("\\n", " ").replace("\\'", "'")
        return message if " " in message else f"no key {message!r}"
    return message if isinstance(e, (ValueError, TypeError)) else f"{type(e).__name__}: {message}"
