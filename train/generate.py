"""Generates with a finished student: one document per input line, one output line per document.

    python -m train.generate --model WORKDIR_OR_PACKED_FILE --input docs.txt --output out.txt \
        [--batch-size N] [--num-beams K] [--max-length L] [--compute codes|fake]

`--model` is a run's workdir (its `student_hf/`) or a packed file (`train.export --format
packed`); its weights stay resident as integer codes. Decoding uses the run's generation
settings (beams, lengths, no-repeat n-grams), which the flags override. Blank input lines give
blank output lines; lines longer than the model's source positions are truncated (one warning).

In-process: `main(["train.generate", "--model", ..., "--input", ..., "--output", ...])`, the
program name first as absl expects (`sys.argv`).
"""

import os
import sys

from absl import flags

from train.flags import parse_flags

# (flag, least value, why): checked right after parsing, before anything is read
_AT_LEAST = (
    ("batch-size", 1, ""),
    ("num-beams", 1, ""),
    ("max-length", 2, " (it counts the decoder start token: 2 is one generated token)"),
)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _read_lines(path: str) -> list[str]:
    """The lines of `path` split at newlines only (not at form feeds or U+2028, so the output
    lines up with what `wc -l` counts)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("model", None, "a run's workdir or a packed .safetensors file", flag_values=fv, required=True)
    flags.DEFINE_string("input", None, "one document per line (UTF-8)", flag_values=fv, required=True)
    flags.DEFINE_string("output", None, "one output line per input line", flag_values=fv, required=True)
    flags.DEFINE_integer("batch-size", 16, "documents per batch", flag_values=fv)
    flags.DEFINE_integer("num-beams", None, "default: the run's setting", flag_values=fv)
    flags.DEFINE_integer(
        "max-length", None, "decoder tokens, the start token included; default: the run's setting", flag_values=fv
    )
    flags.DEFINE_enum(
        "compute",
        "codes",
        ["codes", "fake"],
        "products on integer codes (default) or on dequantized weights",
        flag_values=fv,
    )


def _fail(message) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    """Generates; `argv` is the whole command line, program name first (`sys.argv`)."""
    args = parse_flags(argv, _define, __doc__)
    for name, least, why in _AT_LEAST:  # every check before any weights are read, the flags' first
        value = getattr(args, name.replace("-", "_"))
        if value is not None and value < least:
            return _fail(f"--{name} must be >= {least}{why}, got {value}.")

    from dq_jax.export.packed import PackedFileError
    from dq_jax.inference import loading as inference
    from dq_jax.inference import text

    try:
        inference.model_kind(args.model)
    except (FileNotFoundError, ValueError) as e:
        return _fail(e)
    if not os.path.isfile(args.input):
        return _fail(f"input file {args.input} does not exist.")
    try:
        lines = _read_lines(args.input)
    except UnicodeDecodeError as e:
        return _fail(f"input file {args.input} is not UTF-8 text ({e}).")
    if not any(line.strip() for line in lines):
        return _fail(f"input file {args.input} has no non-blank lines; nothing to generate.")

    try:
        student = inference.load(args.model, compute=args.compute)
        overrides = {k: v for k, v in (("num_beams", args.num_beams), ("max_length", args.max_length)) if v is not None}
        gen = student.generation.replace(**overrides)
    except (PackedFileError, FileNotFoundError, ValueError) as e:
        return _fail(e)
    if args.max_length is not None and gen.min_length >= gen.max_length:  # the run's min_length
        return _fail(f"--max-length {gen.max_length} must be above the run's min_length {gen.min_length}.")
    encoded = text.encode(student, lines)
    if encoded.truncated:
        print(
            f"warning: {encoded.truncated} of {len(lines)} lines are longer than the model's "
            f"{encoded.max_tokens} source positions and were truncated.",
            file=sys.stderr,
        )
    try:
        result = text.generate_texts(student, encoded, args.batch_size, gen)
    except ValueError as e:  # settings the model cannot run, e.g. max_length beyond its positions
        return _fail(e)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in result.texts))
    steady = result.steady_tokens_per_second
    speed = (
        f"{steady:.1f} tokens/s once compiled, {result.tokens_per_second:.1f} overall"
        if steady is not None
        else f"{result.tokens_per_second:.1f} tokens/s, compilation included: every batch had a new shape"
    )
    print(
        f"wrote {len(result.texts)} lines to {args.output}: {result.tokens} tokens in {result.seconds:.1f} s ({speed})"
    )
    print(
        f"weights resident: {_mib(student.resident_bytes)} as codes (int8 containers) vs "
        f"{_mib(student.fp32_bytes)} in fp32 ({student.fp32_bytes / student.resident_bytes:.1f}x smaller)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
