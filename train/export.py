"""Exports the finished student of a run.

    python -m train.export --workdir DIR --format hf|packed [--out PATH]

`hf`: a directory `BartForConditionalGeneration.from_pretrained` (or mBART's) loads, holding
the fake-quantized weights. `packed`: one safetensors file with the integer codes packed at
their bit-width, scales, fp32 tensors, configs and tokenizer (`dq_jax.export.hf_dir.load_packed`;
`dq_jax.export.hf_dir.packed_to_hf` turns it into an HF directory with numpy only).
"""

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Export the student of a finished run.")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--format", required=True, choices=["hf", "packed"])
    ap.add_argument("--out", default=None, help="default: WORKDIR/export/hf or WORKDIR/export/student.packed.safetensors")
    args = ap.parse_args(argv)
    from dq_jax.export.workdir import export_workdir
    try:
        out = export_workdir(args.workdir, args.format, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out['path']} ({out['bytes'] / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
