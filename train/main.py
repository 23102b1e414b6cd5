"""Runs the DQ-BART job a config describes.

    python -m train.main --config configs/NAME.py[:variant] --workdir DIR [--config.a.b=value ...]

In-process: `main(["train.main", "--config", ..., "--workdir", ...])`, the program name first
as absl expects (`sys.argv`).
"""

import errno
import logging
import os
import sys

from absl import flags

from train.flags import parse_flags


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "Directory for everything the run writes.", flag_values=fv, required=True)


def main(argv: list[str]) -> int | None:
    """Runs the job; `argv` is the whole command line, program name first (`sys.argv`)."""
    args = parse_flags(argv, _define, __doc__, config=True)
    workdir = args.workdir
    from dq_jax.parallel import distributed
    from train.settings import distributed_from_config, spec_from_config

    try:
        spec = spec_from_config(args.config)  # every config check happens here, before any work
        dist = distributed_from_config(args.config)
    except ValueError as e:
        sys.exit(f"error: {e}")
    os.makedirs(workdir, exist_ok=True)
    try:
        distributed.initialize(dist)
    except Exception as e:  # the runtime reports a missing coordinator or peer as assorted errors
        sys.exit(f"error: could not join the distributed runtime ({dist.coordinator_address or 'auto'}): {e}")
    import jax

    log_name = "run.log" if jax.process_index() == 0 else f"run.process{jax.process_index()}.log"
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.FileHandler(os.path.join(workdir, log_name)), logging.StreamHandler(sys.stderr)],
        force=True,
    )
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax reports every file it writes
    from dq_jax import pipeline
    from dq_jax.training.checkpoint import CheckpointError
    from dq_jax.training.trainer import Interrupted, NonFiniteLossError
    from dq_jax.utils import compilation_cache
    from dq_jax.utils.workdir_lock import Busy
    from train.report import print_results

    logger = logging.getLogger("train.main")
    compilation_cache.enable(spec.compilation_cache)
    try:
        results = pipeline.run(spec, workdir)
    except Interrupted as e:  # SIGTERM / Ctrl-C: the checkpoint is saved, exit as the signal asks
        logger.warning("%s", e)
        print(str(e), file=sys.stderr)
        sys.exit(128 + e.signum)
    except (NonFiniteLossError, CheckpointError, Busy, ValueError, FileNotFoundError) as e:
        logger.error("%s", e)
        sys.exit(f"error: {e}")
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        logger.error("%s", e)
        sys.exit(
            f"error: disk full writing {e.filename or workdir}; checkpoints already written are "
            "intact: free space and rerun the same command to resume."
        )
    logger.info("%s", compilation_cache.summary())
    if distributed.is_main():
        print_results(results)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
