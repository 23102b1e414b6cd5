"""Sizes a job before machines are booked: per-device memory and FLOPs of each training stage's
step, compiled ahead of time for the config's mesh and largest batch, with nothing allocated.

    python -m train.plan --config configs/NAME.py[:variant] [--config.mesh=...] [--config.train.batch_size=...]
        [--device_memory_gib N] [--cpu_devices N] [--markdown]

Exits 1 with advice (FSDP, remat, smaller batch, gradient accumulation) when a stage does not fit
the device memory: the backend's (GPU/TPU) or `--device_memory_gib`. `--cpu_devices 8` simulates
8 CPU devices, to plan an 8-device mesh on a laptop.

In-process: `main(["train.plan", "--config", ...])`, the program name first as absl expects
(`sys.argv`).
"""

import logging
import sys

from absl import flags

from train.flags import parse_flags


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_float(
        "device_memory_gib", 0.0, "Memory of one device in GiB (0: what the backend reports).", flag_values=fv
    )
    flags.DEFINE_integer("cpu_devices", 0, "Simulate this many CPU devices (0: the devices JAX finds).", flag_values=fv)
    flags.DEFINE_boolean("markdown", False, "Print the table as Markdown.", flag_values=fv)


_COLUMNS = {
    "stage": "stage",
    "batch": "A x B x (S+T)",
    "rows": "rows/device",
    "remat": "remat",
    "compile_s": "compile s",
    "gflops": "GFLOP/device",
    "arguments": "arguments",
    "outputs": "outputs",
    "aliased": "aliased",
    "temporaries": "temporaries",
    "total": "total",
    "fits": "fits",
}
_BYTES = ("arguments", "outputs", "aliased", "temporaries", "total")


def _bits(b) -> str:
    return str(b) if b else "32"


def rows(p) -> tuple[list[dict], str]:
    """The table's rows, bytes in GiB (MiB when every total is below a tenth of a GiB), and the unit."""
    big = max((s.total_bytes for s in p.stages), default=0) >= (1 << 30) / 10
    unit, scale = ("GiB", 1 << 30) if big else ("MiB", 1 << 20)
    fits = {True: "yes", False: "NO", None: "?"}
    out = []
    for s in p.stages:
        sizes = dict(zip(_BYTES, (s.argument_bytes, s.output_bytes, s.alias_bytes, s.temp_bytes, s.total_bytes)))
        out.append(
            {
                "stage": s.stage,
                "batch": f"{s.accum} x {s.batch_size} x ({s.source_length}+{s.target_length})",
                "rows": s.rows_per_device,
                "remat": s.remat,
                "compile_s": f"{s.compile_seconds:.1f}",
                "gflops": f"{s.flops / 1e9:.4g}",
                **{k: f"{v / scale:.3g}" for k, v in sizes.items()},
                "fits": fits[p.fits(s)],
            }
        )
    return out, unit


def report(p, spec, markdown: bool = False) -> str:
    from dq_jax.planner import size_text
    from dq_jax.utils.table import format_table

    t, s, q = p.teacher.cfg, p.student, spec.quant
    memory = (
        f"{size_text(p.device_memory_bytes)} per device"
        if p.device_memory_bytes is not None
        else "unknown per device (pass --device_memory_gib to check the fit)"
    )
    lines = [
        f"teacher: {p.teacher.source}: {t.model_type} {t.encoder_layers}-{t.decoder_layers} layers, "
        f"d_model {t.d_model}, vocab {t.vocab_size}",
        f"student: {s.encoder_layers}-{s.decoder_layers} layers, W-E-A {_bits(q.weight_bits)}-"
        f"{_bits(q.embed_bits)}-{_bits(q.act_bits)} ({q.method}), precision {spec.precision}",
        f"devices: mesh {p.mesh} over {p.device_count} {p.device_kind} devices; memory {memory}",
    ]
    lines += [f"skipped: {name} ({why})" for name, why in p.skipped]
    if p.stages:
        table, unit = rows(p)
        lines += [
            "",
            format_table(table, list(_COLUMNS), _COLUMNS, fmt=lambda _k, v: str(v), markdown=markdown),
            "",
            f"{unit} and FLOPs per device, from XLA's analysis of the compiled step; total = arguments + outputs "
            "- aliased (the donated train state) + temporaries.",
        ]
    return "\n".join(lines)


def main(argv: list[str]) -> int | None:
    """Plans the job; `argv` is the whole command line, program name first (`sys.argv`)."""
    args = parse_flags(argv, _define, __doc__, config=True)
    for name in ("absl", "jax"):  # jax logs at INFO each backend it does not find
        logging.getLogger(name).setLevel(logging.WARNING)
    import jax

    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before anything asks for a device
    from dq_jax import planner
    from train.settings import spec_from_config

    try:
        spec = spec_from_config(args.config)
        p = planner.plan(spec, args.device_memory_gib or None)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report(p, spec, args.markdown))
    if p.too_big:
        print()
        for s in p.too_big:
            print("\n".join(planner.advice(p, s)))
        print(
            f"error: {' and '.join(s.stage for s in p.too_big)} does not fit in "
            f"{planner.size_text(p.device_memory_bytes)} per device; see the advice above.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
