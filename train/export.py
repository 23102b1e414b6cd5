"""Exports the finished student of a run.

    python -m train.export --workdir DIR --format hf|packed [--out PATH]

`hf`: a directory `BartForConditionalGeneration.from_pretrained` (or mBART's) loads, holding
the fake-quantized weights. `packed`: one safetensors file with the integer codes packed at
their bit-width, scales, fp32 tensors, configs and tokenizer (`dq_jax.export.hf_dir.load_packed`;
`dq_jax.export.hf_dir.packed_to_hf` turns it into an HF directory with numpy only).

In-process: `main(["train.export", "--workdir", ..., "--format", ...])`, the program name first
as absl expects (`sys.argv`).
"""

import sys

from absl import flags

from train.flags import parse_flags


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "The finished run's directory.", flag_values=fv, required=True)
    flags.DEFINE_enum(
        "format", None, ["hf", "packed"], "An HF directory or one packed file.", flag_values=fv, required=True
    )
    flags.DEFINE_string(
        "out", None, "default: WORKDIR/export/hf or WORKDIR/export/student.packed.safetensors", flag_values=fv
    )


def main(argv: list[str]) -> int:
    """Exports; `argv` is the whole command line, program name first (`sys.argv`)."""
    args = parse_flags(argv, _define, __doc__)
    from dq_jax.export.workdir import export_workdir

    try:
        out = export_workdir(args.workdir, args.format, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out['path']} ({out['bytes'] / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
