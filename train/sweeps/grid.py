"""What a sweep's points are: the `--grid`/`--set` grammar, named sweeps (lists of override
dicts) and the points' directory names."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence

TEACHER_DIR = "teacher"
RESERVED = ("teacher", "sweep.json", "sweep.csv", "sweep.md", "tradeoff.png", "sweep.log")
# In a named sweep's dict, the point's directory name rather than a config key.
NAME_KEY = "name"
BITS_KEYS = ("quant.weight_bits", "quant.embed_bits", "quant.act_bits")
# Short names for point directories; other keys use their last component.
SHORT = {
    "quant.weight_bits": "wbits",
    "quant.embed_bits": "ebits",
    "quant.act_bits": "abits",
    "student.layers": "layers",
    "quant.method": "method",
    "distill.mode": "mode",
    "distill.weights": "weights",
    "distill.enabled": "distill",
    "train.steps": "steps",
    "train.learning_rate": "lr",
    "train.batch_size": "bs",
    "teacher.steps": "tsteps",
    "teacher.learning_rate": "tlr",
    "quant.quantize_lm_head": "qhead",
}
LINKED_SHORT = {
    frozenset(("quant.weight_bits", "quant.embed_bits")): "webits",
    frozenset(("quant.weight_bits", "quant.embed_bits", "quant.act_bits")): "bits",
}
_KEY = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_AXIS = re.compile(rf"^\s*({_KEY}(?:\s*\+\s*{_KEY})*)\s*=(.*)$", re.S)
_SET = re.compile(rf"^\s*({_KEY})\s*=(.*)$", re.S)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class SweepError(ValueError):
    """A mistake in the sweep's arguments, found before anything runs."""


def value_text(v) -> str:
    """A Python value as `--config.KEY=` takes it."""
    if isinstance(v, str):
        return v
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(value_text(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


@dataclasses.dataclass(frozen=True)
class Point:
    """One job of a sweep: a directory name and the config overrides (key -> value text)."""

    name: str
    overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name) or len(self.name) > 120:
            raise SweepError(f"point name {self.name!r}: use letters, digits and . _ + - (at most 120).")
        object.__setattr__(self, "overrides", {k: value_text(v) for k, v in dict(self.overrides).items()})


def _split_top_level(text: str) -> list[str]:
    """Splits on commas outside (), [] and {}."""
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth <= 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    return parts + ["".join(cur)]


def parse_axis(text: str) -> tuple[tuple[str, ...], list[str]]:
    """`'a.b=1,2'` -> (('a.b',), ['1', '2']); `'a+b=1;2'` -> (('a', 'b'), ['1', '2'])."""
    m = _AXIS.match(text)
    if not m:
        raise SweepError(f"bad grid {text!r}: write KEY=V1,V2 (or KEY=V1;V2 when values contain commas).")
    keys = tuple(k.strip() for k in m.group(1).split("+"))
    body = m.group(2)
    if ";" in body:
        values = [v.strip() for v in (body[:-1] if body.rstrip().endswith(";") else body).split(";")]
    else:
        values = [v.strip() for v in _split_top_level(body)]
    if len(set(keys)) != len(keys):
        raise SweepError(f"bad grid {text!r}: a key appears twice.")
    if len(set(values)) != len(values):
        raise SweepError(f"bad grid {text!r}: a value appears twice.")
    return keys, values


def parse_set(text: str) -> tuple[str, str]:
    """`'a.b=value'` -> ('a.b', 'value'), the value taken whole."""
    m = _SET.match(text)
    if not m:
        raise SweepError(f"bad --set {text!r}: write KEY=VALUE, e.g. train.steps=100.")
    return m.group(1), m.group(2).strip()


def _short(keys: Sequence[str], all_keys: Iterable[str]) -> str:
    if len(keys) > 1:
        return LINKED_SHORT.get(frozenset(keys)) or "+".join(_short((k,), all_keys) for k in keys)
    key = keys[0]
    if key in SHORT:
        return SHORT[key]
    last = key.rsplit(".", 1)[-1]
    clash = any(k != key and (SHORT.get(k) or k.rsplit(".", 1)[-1]) == last for k in all_keys)
    return key if clash else last


def _name_part(short: str, key: str, value: str) -> str:
    if key in BITS_KEYS and value.strip().lower() in ("0", "fp", "none"):
        value = "32"  # full precision, as the W-E-A column writes it
    v = re.sub(r"[\s,/\\:;=]+", "-", value.strip().strip("()[]{}'\""))
    v = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9._+-]", "", v)).strip("-") or "none"
    return short + (v if v[0].isdigit() else "-" + v)


def _digest(overrides: Mapping[str, str]) -> str:
    return hashlib.sha1(json.dumps(sorted(overrides.items())).encode()).hexdigest()[:8]


def _finish_name(name: str, overrides: Mapping[str, str], taken: set[str]) -> str:
    if len(name) > 96:
        name = name[:80].rstrip("_-.") + "_" + _digest(overrides)
    if name in taken or name in RESERVED or name.startswith(TEACHER_DIR + "_"):
        name = f"{name}_{_digest(overrides)}"
    taken.add(name)
    return name


def _linked_groups(overrides: Mapping[str, str]) -> list[tuple[str, ...]]:
    """`overrides`' keys in order, one tuple each, except that the keys of a `LINKED_SHORT` set
    that all have one value are one tuple where the first of them stands (the largest such set
    wins): the keys a `K1+K2=` axis would have set together."""
    merged: dict[str, tuple[str, ...]] = {}  # the group's first key -> its keys in order
    used: set[str] = set()
    for linked in sorted(LINKED_SHORT, key=len, reverse=True):
        if linked <= overrides.keys() and not linked & used and len({overrides[k] for k in linked}) == 1:
            keys = tuple(k for k in overrides if k in linked)
            merged[keys[0]] = keys
            used |= linked
    return [merged.get(k, (k,)) for k in overrides if k in merged or k not in used]


def point_name(overrides: Mapping[str, object], taken: set[str] | None = None) -> str:
    """A readable, filesystem-safe name for `overrides`: one part per key in order, keys set
    together to one value (`LINKED_SHORT`) as one part, so `{weight_bits: 2, embed_bits: 2,
    student.layers: 3-1}` is `webits2_layers3-1` as its grid would name it."""
    overrides = {k: value_text(v) for k, v in overrides.items()}
    parts = [_name_part(_short(keys, overrides), keys[0], overrides[keys[0]]) for keys in _linked_groups(overrides)]
    return _finish_name("_".join(parts) or "base", overrides, set() if taken is None else taken)


def expand_grid(grids: Sequence[str]) -> list[Point]:
    """The cartesian product of the axes, the first axis varying slowest."""
    axes = [parse_axis(g) for g in grids]
    all_keys = [k for keys, _ in axes for k in keys]
    dupes = sorted({k for k in all_keys if all_keys.count(k) > 1})
    if dupes:
        raise SweepError(f"{dupes[0]} is in more than one grid axis.")
    points, taken = [], set()
    for combo in itertools.product(*(values for _, values in axes)):
        overrides, parts = {}, []
        for (keys, _), value in zip(axes, combo):
            overrides.update(dict.fromkeys(keys, value))
            parts.append(_name_part(_short(keys, all_keys), keys[0], value))
        points.append(Point(_finish_name("_".join(parts) or "base", overrides, taken), overrides))
    return points


def named_points(entries: Sequence[Mapping[str, object]], where: str) -> list[Point]:
    """A named sweep, `[{KEY: VALUE, ...}, ...]`, as its points in order. A dict's `NAME_KEY`
    is its point's name; without it the name is derived (`point_name`). `where` starts errors."""
    if not isinstance(entries, (list, tuple)) or not all(isinstance(e, Mapping) for e in entries):
        raise SweepError(
            f"{where}: write a list of dicts of overrides, e.g. "
            "[{'name': 'dq', 'quant.weight_bits': 2}, {'quant.weight_bits': 8}]."
        )
    names = [e[NAME_KEY] for e in entries if NAME_KEY in e]
    repeated = sorted({str(n) for n in names if names.count(n) > 1})
    if repeated:
        raise SweepError(f"{where}: point names must be unique; {repeated} repeat.")
    taken = {str(n) for n in names}  # derived names keep clear of the given ones
    points = []
    for e in entries:
        overrides = {k: v for k, v in e.items() if k != NAME_KEY}
        try:
            points.append(Point(e[NAME_KEY] if NAME_KEY in e else point_name(overrides, taken), overrides))
        except SweepError as err:
            raise SweepError(f"{where}: {err}") from None
    return points


def cross(points: Sequence[Point], grid: Sequence[Point], where: str) -> list[Point]:
    """Each of `points` with each of `grid` (a named sweep with `--grid` axes), the points
    varying slowest; named `<point>_<grid point>`."""
    taken: set[str] = set()
    out = []
    for p, g in itertools.product(points, grid):
        both = sorted(set(p.overrides) & set(g.overrides))
        if both:
            raise SweepError(f"{both[0]} is set by {where} point {p.name!r} and by a --grid axis.")
        overrides = {**p.overrides, **g.overrides}
        out.append(Point(_finish_name(f"{p.name}_{g.name}", overrides, taken), overrides))
    return out
