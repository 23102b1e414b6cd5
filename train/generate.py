"""Generates with a finished student: one document per input line, one output line per document.

    python -m train.generate --model WORKDIR_OR_PACKED_FILE --input docs.txt --output out.txt \
        [--batch-size N] [--num-beams K] [--max-length L] [--compute codes|fake]

`--model` is a run's workdir (its `student_hf/`) or a packed file (`train.export --format
packed`); its weights stay resident as integer codes. Decoding uses the run's generation
settings (beams, lengths, no-repeat n-grams), which the flags override. Blank input lines give
blank output lines; lines longer than the model's source positions are truncated (one warning).
"""

import argparse
import os
import sys


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _read_lines(path: str) -> list[str]:
    """The lines of `path` split at newlines only (not at form feeds or U+2028, so the output
    lines up with what `wc -l` counts)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Summarize or translate a text file with a finished student.")
    ap.add_argument("--model", required=True, help="a run's workdir or a packed .safetensors file")
    ap.add_argument("--input", required=True, help="one document per line (UTF-8)")
    ap.add_argument("--output", required=True, help="one output line per input line")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--num-beams", type=int, default=None, help="default: the run's setting")
    ap.add_argument("--max-length", type=int, default=None, help="default: the run's setting")
    ap.add_argument("--compute", choices=["codes", "fake"], default="codes",
                    help="products on integer codes (default) or on dequantized weights")
    args = ap.parse_args(argv)

    from dq_jax.inference import loading as inference
    from dq_jax.export.packed import PackedFileError

    def fail(message) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    try:  # every check before any weights are read
        inference.model_kind(args.model)
    except (FileNotFoundError, ValueError) as e:
        return fail(e)
    if args.batch_size < 1:
        return fail(f"--batch-size must be >= 1, got {args.batch_size}.")
    if not os.path.isfile(args.input):
        return fail(f"input file {args.input} does not exist.")
    try:
        lines = _read_lines(args.input)
    except UnicodeDecodeError as e:
        return fail(f"input file {args.input} is not UTF-8 text ({e}).")
    if not any(line.strip() for line in lines):
        return fail(f"input file {args.input} has no non-blank lines; nothing to generate.")

    try:
        student = inference.load(args.model, compute=args.compute)
        overrides = {k: v for k, v in (("num_beams", args.num_beams), ("max_length", args.max_length)) if v is not None}
        gen = student.generation.replace(**overrides)
    except (PackedFileError, FileNotFoundError, ValueError) as e:
        return fail(e)
    encoded = inference.encode(student, lines)
    if encoded.truncated:
        print(f"warning: {encoded.truncated} of {len(lines)} lines are longer than the model's "
              f"{encoded.max_tokens} source positions and were truncated.", file=sys.stderr)
    try:
        result = inference.generate_texts(student, encoded, args.batch_size, gen)
    except ValueError as e:  # settings the model cannot run, e.g. max_length beyond its positions
        return fail(e)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write("".join(text + "\n" for text in result.texts))
    steady = result.steady_tokens_per_second
    speed = (f"{steady:.1f} tokens/s once compiled, {result.tokens_per_second:.1f} overall" if steady is not None else
             f"{result.tokens_per_second:.1f} tokens/s, compilation included: every batch had a new shape")
    print(f"wrote {len(result.texts)} lines to {args.output}: {result.tokens} tokens in {result.seconds:.1f} s ({speed})")
    print(f"weights resident: {_mib(student.resident_bytes)} as codes (int8 containers) vs "
          f"{_mib(student.fp32_bytes)} in fp32 ({student.fp32_bytes / student.resident_bytes:.1f}x smaller)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
