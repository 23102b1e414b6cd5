"""Command-line parsing shared by the programs that take `--config`: absl's parser, with config
mistakes (unknown key, wrong type, bad variant) reported as one line instead of a traceback."""

import sys

from absl import flags


def parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        if any(line.startswith("Traceback") for line in lines):  # an error raised inside get_config
            lines = [lines[0], lines[-1]]
        sys.exit("error: " + "\n".join(lines) + "\nPass --helpfull to see the flags.")
    except (AttributeError, KeyError, ValueError, TypeError) as e:
        message = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        sys.exit(f"error: bad --config: {message}")
