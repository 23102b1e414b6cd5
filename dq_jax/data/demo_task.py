"""The offline demo task: synthetic news "documents" and one-sentence "summaries".

`configs/demo.py` runs the whole pipeline on a fresh machine with nothing from outside the
repository, so the data and the tokenizer are generated here, deterministically from a seed.

Each example reports one of six kinds of event (company results, a football match, a mayoral
election, a new site for a company, a storm, a new chief executive) in 3-6 sentences
(40-90 words): a lead, the facts in a shuffled order and 0-3 distractor sentences that
mention other people, cities and numbers. The summary (8-16 words) follows one fixed
headline template per kind, so the mapping is learnable, but it is not a copy: it reorders
facts, changes verb forms and needs a comparison (which number is larger decides "rises" or
"falls", the winner of a match or election, the order of the score) or a count (how many
other cities were considered). The vocabulary is closed (about 540 distinct words, 100 of
them numbers), so a small transformer learns it in minutes on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

TASK_VERSION = "dq-jax-demo-v1"
DEFAULT_SIZES = {"train": 20000, "validation": 300, "test": 500}
MIN_WORDS, MAX_WORDS = 40, 90
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3 as in BART; "<mask>" goes last
TOKENIZER_VOCAB = 1000  # the trained tokenizer's size, special tokens included

FIRST = (
    "Maria James Sarah David Laura Michael Anna Peter Emma Thomas Julia Daniel Helen Robert "
    "Clara Simon Grace Martin Alice Paul Nina George Rachel Oliver Sophie Henry Lucy Adam "
    "Irene Victor Hannah Samuel Olivia Lewis Ruth Edward Chloe Frank Diana Owen"
).split()
LAST = (
    "Lopez Walker Chen Patel Novak Brennan Okafor Fischer Moreau Silva Tanaka Kowalski Reyes "
    "Lindqvist Murphy Haddad Costa Adler Grant Ward Romero Jensen Duncan Keller Ivanova Barros "
    "Quinn Mendez Hart Sato Nolan Fraser Ortiz Berg Dalton Ferreira Lamb Price Young Rossi"
).split()
CITIES = (
    "Denver Boston Lisbon Glasgow Leeds Dublin Oslo Lyon Porto Bristol Austin Seattle Cardiff "
    "Geneva Munich Turin Krakow Valencia Toronto Ottawa Dallas Phoenix Atlanta Hamburg Vienna "
    "Madrid Naples Antwerp Belfast Aberdeen"
).split()
PREFIXES = (
    "Northwind Bluestone Redfield Silverlake Harbor Greenway Ironbridge Westgate Eastmoor "
    "Summit Oakridge Clearwater Highland Riverside Kingsley Brightwater Stonehill Maple "
    "Falcon Granite"
).split()
SECTORS = {
    "Bank": "banking",
    "Energy": "energy",
    "Foods": "food",
    "Motors": "carmaking",
    "Airlines": "airline",
    "Telecom": "telecoms",
    "Pharma": "drugs",
    "Steel": "steel",
    "Media": "media",
    "Retail": "retail",
}
MASCOTS = "Rovers United Rangers Wolves Lions Eagles Giants Athletic".split()
PARTIES = "Green Labour Liberal Reform Unity Progress Civic National".split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = ("January February March April May June July August September October November December").split()
FACILITIES = "factory warehouse laboratory depot office".split()
RESULT_REASONS = (
    "strong demand in Europe",
    "lower fuel costs",
    "weak sales in the spring",
    "higher interest rates",
    "a cold winter",
    "new contracts in Asia",
    "rising wages",
    "a stronger dollar",
)
SITE_REASONS = ("good transport links", "a skilled workforce", "lower costs", "space to grow", "strong local support")


class Example(NamedTuple):
    """One event's sentences, before `_example` orders them and picks the distractors."""

    lead: str  # always the document's first sentence
    facts: list[str]  # what the summary is made from: all kept, in a shuffled order
    extras: list[str]  # distractors: 0-3 of them are kept
    summary: str


@dataclass(frozen=True)
class Phrasings:
    """One kind of event as `str.format` templates, whose slots name the values the event draws.

    Each sentence is a tuple of its alternative phrasings: the lead and the facts may have
    several, one of which is drawn; distractors and the summary have exactly one.
    """

    lead: tuple[str, ...]
    facts: tuple[tuple[str, ...], ...]
    extras: tuple[str, ...]
    summary: str

    @classmethod
    def parse(cls, spec: str) -> Phrasings:
        """Read a spec: a line `role template` per sentence, with role `lead`, `fact`, `extra` or
        `summary`, and a line `| template` for another phrasing of the sentence above it.

        Plain lines rather than tuple literals: the wording is what gets edited, and in a literal
        a forgotten comma silently joins two phrasings into one.
        """
        roles: dict[str, list[list[str]]] = {"lead": [], "fact": [], "extra": [], "summary": []}
        sentence: list[str] = []
        for line in spec.strip().splitlines():
            role, template = line.strip().split(maxsplit=1)
            if role != "|":  # a new sentence; "|" adds a phrasing to the current one
                sentence = []
                roles[role].append(sentence)
            sentence.append(template)
        [lead], [[summary]] = roles["lead"], roles["summary"]  # one each, and one summary phrasing
        extras = tuple(template for [template] in roles["extra"])  # distractors are not drawn
        return cls(tuple(lead), tuple(map(tuple, roles["fact"])), extras, summary)

    # Drawing the templates and filling them in are separate steps because the data is pinned
    # (trained results depend on it), so every draw from `r` keeps its place: the lead's
    # phrasing first, then the facts', then the values only later sentences use (a distractor's
    # number, a reason). Each event function makes these calls and draws in that order.
    def draw_lead(self, r: random.Random) -> str:
        return _draw(r, self.lead)

    def draw_facts(self, r: random.Random) -> list[str]:
        return [_draw(r, fact) for fact in self.facts]

    def fill(self, lead: str, facts: list[str], **slots: object) -> Example:
        """The `Example` from the drawn `lead` and `facts` templates, with all slots filled in."""

        def text(template: str) -> str:
            return template.format(**slots)

        return Example(text(lead), [text(t) for t in facts], [text(t) for t in self.extras], text(self.summary))


def _draw(r: random.Random, phrasings: tuple[str, ...]) -> str:
    # A sentence with a single phrasing draws nothing: `r.choice` of one item would still
    # consume randomness and shift every later draw.
    return phrasings[0] if len(phrasings) == 1 else r.choice(phrasings)


def _persons(r: random.Random, k: int) -> list[str]:
    firsts, lasts = r.sample(FIRST, k), r.sample(LAST, k)
    return [f"{a} {b}" for a, b in zip(firsts, lasts)]


def _org(r: random.Random) -> tuple[str, str]:
    kind = r.choice(sorted(SECTORS))
    return f"{r.choice(PREFIXES)} {kind}", SECTORS[kind]


RESULTS = Phrasings.parse("""
lead    {org}, the {sector} group based in {city}, said on {day} that its profit for {month} was {now} million dollars.
      | On {day}, {org} reported a profit of {now} million dollars for {month} at its headquarters in {city}.
fact    That compares with {before} million dollars in the same month last year.
      | A year earlier, the company made {before} million dollars.
fact    Chief executive {boss} said the result reflected {reason}.
      | {boss}, the chief executive, told reporters that {reason} had shaped the figures.
extra   Analysts in {city2} had expected a profit of about {expected} million dollars.
extra   Rival {rival} is due to report its own results in {month2}.
extra   Shares in {rival} closed slightly higher on {day2}.
summary {org} profit {verb} to {now} million dollars, chief executive {boss} says.
""")


def _results(r: random.Random) -> Example:
    (org, sector), (rival, _) = _org(r), _org(r)
    city, city2 = r.sample(CITIES, 2)
    (boss,) = _persons(r, 1)
    day, day2 = r.sample(WEEKDAYS, 2)
    month, month2 = r.sample(MONTHS, 2)
    now = r.randrange(12, 96)
    before = r.choice([n for n in range(12, 96) if abs(n - now) >= 3])
    lead = RESULTS.draw_lead(r)
    reason = r.choice(RESULT_REASONS)  # the one value drawn between the lead and the facts
    facts = RESULTS.draw_facts(r)
    expected = r.randrange(12, 96)
    return RESULTS.fill(
        lead,
        facts,
        org=org,
        sector=sector,
        rival=rival,
        city=city,
        city2=city2,
        boss=boss,
        day=day,
        day2=day2,
        month=month,
        month2=month2,
        now=now,
        before=before,
        reason=reason,
        expected=expected,
        verb="rises" if now > before else "falls",
    )


MATCH = Phrasings.parse("""
lead    {home} hosted {away} in {home_city} on {day} evening.
      | {away} travelled to {home_city} on {day} to face {home}.
fact    The final score was {home} {h}, {away} {a}.
      | {away} scored {a} and {home} scored {h} in a lively game.
fact    {p_home} was on target for {home}, and {p_away} scored for {away}.
      | {p_away} scored for the visitors, while {p_home} found the net for the hosts.
extra   A crowd of {crowd} thousand watched the game.
extra   {p_hurt}, the manager of {city3} {mascot3}, watched from the stands.
extra   The two clubs meet again in {month}.
summary {win} beat {lose} {w}-{l} in {home_city} as {scorer} scores.
""")


def _match(r: random.Random) -> Example:
    home_city, away_city, city3 = r.sample(CITIES, 3)
    home, away = (f"{c} {m}" for c, m in zip((home_city, away_city), r.sample(MASCOTS, 2)))
    p_home, p_away, p_hurt = _persons(r, 3)
    h, a = r.sample(range(1, 6), 2)
    day = r.choice(WEEKDAYS)
    lead = MATCH.draw_lead(r)
    facts = MATCH.draw_facts(r)
    crowd, mascot3, month = r.randrange(12, 60), r.choice(MASCOTS), r.choice(MONTHS)
    (win, win_goals, scorer), (lose, lose_goals, _) = sorted(
        [(home, h, p_home), (away, a, p_away)], key=lambda t: -t[1]
    )
    return MATCH.fill(
        lead,
        facts,
        home=home,
        away=away,
        home_city=home_city,
        city3=city3,
        day=day,
        h=h,
        a=a,
        p_home=p_home,
        p_away=p_away,
        p_hurt=p_hurt,
        crowd=crowd,
        mascot3=mascot3,
        month=month,
        win=win,
        lose=lose,
        w=win_goals,
        l=lose_goals,
        scorer=scorer,
    )


ELECTION = Phrasings.parse("""
lead    Voters in {city} went to the polls on {day} to elect a new mayor.
      | {city} held its mayoral election on {day}, with two main candidates in the race.
fact    {winner_line}
fact    {loser_line}
extra   Turnout was {turnout} percent, down from the last election.
extra   Smaller parties shared the remaining {minor} percent.
extra   {former}, a former mayor of {city2}, did not stand this time.
summary {winner} of the {party_w} Party wins {city} mayoral race with {share_w} percent of the vote.
""")
# The candidates' lines are shuffled, not drawn one by one: the winner takes either phrasing
# and the loser the other.
CANDIDATE_LINES = (
    "{name} of the {party} Party won {share} percent of the vote, official results showed.",
    "{name}, the {party} Party candidate, received {share} percent.",
)


def _election(r: random.Random) -> Example:
    city, city2 = r.sample(CITIES, 2)
    winner, loser, former = _persons(r, 3)
    party_w, party_l = r.sample(PARTIES, 2)
    share_w, minor = r.randrange(51, 69), r.randrange(2, 10)
    share_l = 100 - share_w - minor
    day = r.choice(WEEKDAYS)
    lead = ELECTION.draw_lead(r)
    facts = ELECTION.draw_facts(r)
    lines = list(CANDIDATE_LINES)
    r.shuffle(lines)
    turnout = r.randrange(30, 71)
    return ELECTION.fill(
        lead,
        facts,
        city=city,
        city2=city2,
        winner=winner,
        former=former,
        party_w=party_w,
        share_w=share_w,
        minor=minor,
        day=day,
        turnout=turnout,
        winner_line=lines[0].format(name=winner, party=party_w, share=share_w),
        loser_line=lines[1].format(name=loser, party=party_l, share=share_l),
    )


SITE = Phrasings.parse("""
lead    {org} will open a new {facility} in {city}, the company announced on {day}.
      | {org} announced on {day} that it had chosen {city} for its new {facility}.
fact    The site is expected to create {jobs} jobs by {month}.
      | About {jobs} people will work there once it opens in {month}.
fact    {considered} had also been considered.
fact    {boss}, who leads the project, said {city} offered {reason}.
extra   Officials in {first_other} said they were disappointed by the decision.
extra   Construction work is due to begin in {month2}.
extra   The company already employs {staff} people in {city3}.
summary {org} picks {city} over {count} other cities for new {facility} with {jobs} jobs.
""")


def _site(r: random.Random) -> Example:
    org, _ = _org(r)
    k = r.choice([2, 3])
    city, *others = r.sample(CITIES, k + 2)
    others, city3 = others[:k], others[k]
    (boss,) = _persons(r, 1)
    facility, jobs, day = r.choice(FACILITIES), r.randrange(20, 100), r.choice(WEEKDAYS)
    month, month2 = r.sample(MONTHS, 2)
    lead = SITE.draw_lead(r)
    facts = SITE.draw_facts(r)
    reason, staff = r.choice(SITE_REASONS), r.randrange(20, 100)
    return SITE.fill(
        lead,
        facts,
        org=org,
        city=city,
        city3=city3,
        first_other=others[0],
        boss=boss,
        facility=facility,
        jobs=jobs,
        day=day,
        month=month,
        month2=month2,
        reason=reason,
        staff=staff,
        considered=" and ".join([", ".join(others[:-1]), others[-1]]),
        count={2: "two", 3: "three"}[k],
    )


STORM = Phrasings.parse("""
lead    A storm swept through {city} on {day} night, bringing down trees and power lines.
      | Heavy rain and strong winds hit {city} late on {day}.
fact    About {homes} thousand homes lost power, according to {utility}.
      | {utility} said {homes} thousand homes were left without electricity.
fact    {spokesperson}, a spokesperson for {utility}, said crews were working through the night.
extra   Winds of up to {wind} miles per hour were recorded near the coast.
extra   By {day2}, power had been restored to {restored} thousand homes.
extra   Schools in {city2} will remain closed until {day3}.
summary Storm leaves {homes} thousand homes without power in {city}, {utility} says.
""")


def _storm(r: random.Random) -> Example:
    city, city2 = r.sample(CITIES, 2)
    utility = f"{r.choice(PREFIXES)} Power"
    (spokesperson,) = _persons(r, 1)
    homes = r.randrange(12, 96)
    day, day2, day3 = r.sample(WEEKDAYS, 3)
    lead = STORM.draw_lead(r)
    facts = STORM.draw_facts(r)
    wind, restored = r.randrange(40, 96), r.randrange(2, homes)
    return STORM.fill(
        lead,
        facts,
        city=city,
        city2=city2,
        utility=utility,
        spokesperson=spokesperson,
        homes=homes,
        day=day,
        day2=day2,
        day3=day3,
        wind=wind,
        restored=restored,
    )


APPOINTMENT = Phrasings.parse("""
lead    {org} has named {new} as its next chief executive, the company said on {day}.
      | The board of {org} on {day} chose {new} to become chief executive.
fact    {new} will replace {old}, who is stepping down after {years} years in the role.
      | {old}, who has run the company for {years} years, will retire in {month}.
fact    {new} previously ran the group's business in {city2}.
extra   {rival1} and {rival2} had also been seen as possible candidates.
extra   Shares in {org} rose {rise} percent after the news.
extra   The company has {staff} thousand staff around the world.
summary {org} names {new} chief executive as {old} steps down after {years} years.
""")


def _appointment(r: random.Random) -> Example:
    org, _ = _org(r)
    new, old, rival1, rival2 = _persons(r, 4)
    city2 = r.choice(CITIES)
    years, day, month = r.randrange(3, 26), r.choice(WEEKDAYS), r.choice(MONTHS)
    lead = APPOINTMENT.draw_lead(r)
    facts = APPOINTMENT.draw_facts(r)
    rise, staff = r.randrange(2, 10), r.randrange(12, 96)
    return APPOINTMENT.fill(
        lead,
        facts,
        org=org,
        new=new,
        old=old,
        rival1=rival1,
        rival2=rival2,
        city2=city2,
        years=years,
        day=day,
        month=month,
        rise=rise,
        staff=staff,
    )


EVENTS: tuple[Callable[[random.Random], Example], ...] = (_results, _match, _election, _site, _storm, _appointment)


def _example(r: random.Random) -> tuple[str, str]:
    """One (document, summary); distractors are redrawn until the length is in range."""
    event = r.choice(EVENTS)(r)
    facts = event.facts
    r.shuffle(facts)  # facts in any order, so the model must read them, not count sentences
    while True:
        body = facts + r.sample(event.extras, r.randrange(0, min(3, 5 - len(facts)) + 1))
        sentences = [event.lead] + body
        # The lead stays first (as in news); facts and distractors mix freely after it.
        order = [0] + r.sample(range(1, len(sentences)), len(sentences) - 1)
        document = " ".join(sentences[i] for i in order)
        if MIN_WORDS <= len(document.split()) <= MAX_WORDS:
            return document, event.summary


def make_split(n: int, seed: int) -> list[dict[str, str]]:
    """`n` examples `{"id", "document", "summary"}`, a pure function of `(n, seed)`."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        document, summary = _example(r)
        rows.append({"id": f"{seed}-{i}", "document": document, "summary": summary})
    return rows


def split_seed(seed: int, split: str) -> int:
    """A seed per split, derived by hashing so no two (seed, split) pairs share a stream."""
    return int.from_bytes(hashlib.sha256(f"{TASK_VERSION}/{seed}/{split}".encode()).digest()[:8], "big")


def _sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _write_atomic(path: str, data: bytes) -> None:
    # Write then rename, so a crash or a concurrent reader never sees half a file.
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _manifest_matches(path: str, record: dict, files: dict[str, str]) -> bool:
    """True if `path` records `record` and every file still has the recorded hash."""
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    if {k: manifest.get(k) for k in record} != record:
        return False
    hashes = manifest.get("sha256", {})
    return all(os.path.isfile(p) and hashes.get(name) == _sha256_file(p) for name, p in files.items())


def write_splits(out_dir: str, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, str]:
    """Write `{split}.jsonl` for each split in `sizes`; returns `{split: path}`.

    Idempotent: `manifest.json` records the task version, seed, sizes and file hashes, and
    nothing is rewritten (mtimes stay) when they all match.
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    os.makedirs(out_dir, exist_ok=True)
    paths = {split: os.path.join(out_dir, f"{split}.jsonl") for split in sizes}
    record = {"task": TASK_VERSION, "seed": seed, "sizes": sizes}
    manifest_path = os.path.join(out_dir, "manifest.json")
    if _manifest_matches(manifest_path, record, paths):
        return paths
    hashes = {}
    for split, n in sizes.items():
        rows = make_split(n, split_seed(seed, split))
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
        _write_atomic(paths[split], data)
        hashes[split] = hashlib.sha256(data).hexdigest()
    _write_atomic(manifest_path, json.dumps({**record, "sha256": hashes}, indent=1).encode())
    return paths


def _texts(files: list[str], columns: tuple[str, str]):
    """Each row's source and target text, the rows read and checked by `data_source` (a bad row
    is an error naming its file, line and column)."""
    from dq_jax.data.config import DataConfig
    from dq_jax.data.source import load_split

    rows, _ = load_split(
        DataConfig(train_files=tuple(files), source_column=columns[0], target_column=columns[1]), "train"
    )
    for source, target in zip(rows[columns[0]], rows[columns[1]]):
        yield source
        yield target


def train_tokenizer(
    files: list[str],
    out_dir: str,
    vocab_size: int = TOKENIZER_VOCAB,
    columns: tuple[str, str] = ("document", "summary"),
) -> str:
    """Train a BART-style byte-level BPE on the sources and targets (`columns`) of `files`.

    Ids: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, then bytes and merges, `<mask>` last, so the
    total is `vocab_size` (fewer only if the corpus runs out of merges). Sequences are wrapped
    as `<s> ... </s>`. Saved with `save_pretrained`, so `AutoTokenizer.from_pretrained(out_dir)`
    loads it. Idempotent through `tokenizer_manifest.json` (input hashes and vocab size).
    """
    os.makedirs(out_dir, exist_ok=True)
    record = {
        "task": TASK_VERSION,
        "vocab_size": vocab_size,
        "columns": list(columns),
        "inputs": [_sha256_file(p) for p in files],
    }
    manifest_path = os.path.join(out_dir, "tokenizer_manifest.json")
    outputs = {name: os.path.join(out_dir, name) for name in ("tokenizer.json", "tokenizer_config.json")}
    if _manifest_matches(manifest_path, record, outputs):
        return out_dir

    # Imported here: transformers takes seconds to import and the skip path needs neither.
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # add_prefix_space=False as in BART: a text's first word has no leading-space marker.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_texts(files, columns), trainer=trainer)
    tokenizer.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    tokenizer.post_processor = processors.RobertaProcessing(  # (sep, cls) positionally
        ("</s>", tokenizer.token_to_id("</s>")),
        ("<s>", tokenizer.token_to_id("<s>")),
        trim_offsets=True,
        add_prefix_space=False,
    )

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )  # cleanup would edit text and break decode(encode(x)) == x
    wrapped.save_pretrained(out_dir)
    hashes = {name: _sha256_file(p) for name, p in outputs.items()}
    _write_atomic(manifest_path, json.dumps({**record, "sha256": hashes}, indent=1).encode())
    return out_dir
