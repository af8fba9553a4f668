"""Generate the built-in arithmetic prompt set, `prompts/arithmetic.jsonl`.

The file is produced by code, not typed by hand, so every reference answer is computed rather
than copied, and the file can be regenerated bit-for-bit::

    python -m si_toolkit.data.make_arithmetic            # rewrite the shipped file
    python -m si_toolkit.data.make_arithmetic --check    # exit 1 if it is out of date

The problems are grade-school word problems over twelve templates (shopping, sharing, time,
distance, multi-step); every answer is an integer. Templates are visited round-robin, so any
prefix of the file (the first n prompts, see `si_toolkit.prompts.load_prompts`) mixes them.
Randomness comes only from `random.Random(seed)`, whose integer-seeded stream is stable across
Python 3 releases.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["TEMPLATES", "DEFAULT_SEED", "DEFAULT_PER_TEMPLATE", "generate_problems", "render_jsonl", "main"]

DEFAULT_SEED = 20_241_125  # any fixed integer; changing it changes the shipped file
DEFAULT_PER_TEMPLATE = 6  # 12 templates x 6 = 72 problems

_NAMES = (
    "Maya", "Tom", "Priya", "Leo", "Amara", "Jonas", "Sofia", "Kenji", "Lena", "Omar",
    "Grace", "Mateo", "Ines", "Ravi", "Chloe", "Daniel", "Zainab", "Felix", "Hana", "Noah",
)
_ITEMS = ("notebooks", "pencils", "apples", "tickets", "stickers", "candles", "mugs", "plants")
_SNACKS = (("muffins", "cookies"), ("sandwiches", "juices"), ("pies", "rolls"), ("tacos", "lemonades"))

Template = Callable[[random.Random, str], tuple[str, int]]


def _change(rng: random.Random, name: str) -> tuple[str, int]:
    count, price = rng.randint(2, 9), rng.randint(2, 12)
    bill = next(b for b in (20, 50, 100, 200) if b > count * price)
    item = rng.choice(_ITEMS)
    text = (
        f"{name} buys {count} {item} at {price} dollars each and pays with a {bill}-dollar bill. "
        f"How many dollars of change does {name} get?"
    )
    return text, bill - count * price


def _order_total(rng: random.Random, name: str) -> tuple[str, int]:
    main, side = rng.choice(_SNACKS)
    a, p = rng.randint(2, 8), rng.randint(3, 9)
    b, q = rng.randint(2, 8), rng.randint(2, 4)
    text = (
        f"A cafe sells {main} for {p} dollars each and {side} for {q} dollars each. "
        f"{name} buys {a} {main} and {b} {side}. How many dollars does {name} spend?"
    )
    return text, a * p + b * q


def _share(rng: random.Random, name: str) -> tuple[str, int]:
    friends, each = rng.randint(3, 9), rng.randint(4, 15)
    item = rng.choice(_ITEMS)
    text = (
        f"{name} has {friends * each} {item} and shares them equally among {friends} friends. "
        f"How many {item} does each friend get?"
    )
    return text, each


def _leftover(rng: random.Random, name: str) -> tuple[str, int]:
    size = rng.randint(4, 9)
    total = size * rng.randint(5, 12) + rng.randint(1, size - 1)
    text = (
        f"{name} packs {total} eggs into cartons that hold {size} eggs each, filling as many "
        "cartons as possible. How many eggs are left over?"
    )
    return text, total % size


def _trip_minutes(rng: random.Random, name: str) -> tuple[str, int]:
    start_h, start_m = rng.randint(1, 6), rng.choice((0, 10, 15, 20, 30, 45))
    duration = rng.randint(35, 200)
    end = start_h * 60 + start_m + duration
    text = (
        f"{name}'s train leaves at {start_h}:{start_m:02d} pm and arrives at "
        f"{end // 60}:{end % 60:02d} pm the same day. How many minutes does the trip take?"
    )
    return text, duration


def _practice_hours(rng: random.Random, name: str) -> tuple[str, int]:
    minutes = rng.choice((15, 20, 30, 45))
    days = (60 // math.gcd(minutes, 60)) * rng.randint(1, 4)  # minutes * days is a whole number of hours
    text = (
        f"{name} practises the piano for {minutes} minutes every day. "
        f"How many hours does {name} practise in {days} days?"
    )
    return text, minutes * days // 60


def _ride_distance(rng: random.Random, name: str) -> tuple[str, int]:
    speed, hours = rng.randint(8, 25), rng.randint(2, 6)
    text = f"{name} cycles at {speed} kilometres per hour for {hours} hours. How many kilometres does {name} ride?"
    return text, speed * hours


def _miles_left(rng: random.Random, name: str) -> tuple[str, int]:
    morning, afternoon, rest = rng.randint(40, 150), rng.randint(30, 120), rng.randint(10, 200)
    text = (
        f"A road trip is {morning + afternoon + rest} miles long. {name} drives {morning} miles in the "
        f"morning and {afternoon} miles in the afternoon. How many miles are left?"
    )
    return text, rest


def _pencils_left(rng: random.Random, name: str) -> tuple[str, int]:
    boxes, per_box, classes = rng.randint(4, 12), rng.choice((10, 12, 20, 24)), rng.randint(2, 6)
    per_class = rng.randint(2, boxes * per_box // classes)
    text = (
        f"{name}'s school orders {boxes} boxes of pencils with {per_box} pencils in each box. "
        f"The school gives {per_class} pencils to each of {classes} classes. How many pencils are left?"
    )
    return text, boxes * per_box - per_class * classes


def _savings(rng: random.Random, name: str) -> tuple[str, int]:
    weekly, weeks = rng.randint(3, 20), rng.randint(3, 12)
    spent = rng.randint(1, weekly * weeks - 1)
    text = (
        f"{name} saves {weekly} dollars a week for {weeks} weeks and then spends {spent} dollars "
        "on a game. How many dollars are left?"
    )
    return text, weekly * weeks - spent


def _fence(rng: random.Random, name: str) -> tuple[str, int]:
    length, width = rng.randint(5, 30), rng.randint(3, 20)
    text = (
        f"{name}'s garden is a rectangle {length} metres long and {width} metres wide. "
        "How many metres of fence are needed to go all the way around it?"
    )
    return text, 2 * (length + width)


def _sale_price(rng: random.Random, name: str) -> tuple[str, int]:
    price, percent = 20 * rng.randint(2, 15), rng.choice((10, 20, 25, 50))
    text = (
        f"A jacket costs {price} dollars and {name} buys it at {percent}% off. "
        "What is the sale price in dollars?"
    )
    return text, price * (100 - percent) // 100  # exact: price is a multiple of 20


TEMPLATES: tuple[tuple[str, Template], ...] = (
    ("change", _change),
    ("order-total", _order_total),
    ("share", _share),
    ("leftover", _leftover),
    ("trip-minutes", _trip_minutes),
    ("practice-hours", _practice_hours),
    ("ride-distance", _ride_distance),
    ("miles-left", _miles_left),
    ("pencils-left", _pencils_left),
    ("savings", _savings),
    ("fence", _fence),
    ("sale-price", _sale_price),
)


def generate_problems(*, per_template: int = DEFAULT_PER_TEMPLATE, seed: int = DEFAULT_SEED) -> list[dict[str, str]]:
    """Return `per_template * len(TEMPLATES)` problems as {"id", "prompt", "answer", "kind"} dicts.

    Deterministic in `seed`. Ids are `arith-000`, `arith-001`, ...; templates cycle in the order
    of `TEMPLATES`; answers are integers written as decimal strings.
    """
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    for _round in range(per_template):
        for _label, template in TEMPLATES:
            text, answer = template(rng, rng.choice(_NAMES))
            rows.append(
                {"id": f"arith-{len(rows):03d}", "prompt": text, "answer": str(answer), "kind": "arithmetic"}
            )
    return rows


def render_jsonl(rows: list[dict[str, str]]) -> str:
    """One JSON object per line, keys in insertion order, non-ASCII kept, newline-terminated."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def default_output() -> Path:
    return Path(__file__).resolve().parent / "prompts" / "arithmetic.jsonl"


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) the shipped arithmetic.jsonl. Returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=default_output(), help="file to write")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the file differs")
    args = parser.parse_args(argv)
    text = render_jsonl(generate_problems())
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else None
        if current != text:
            print(f"{args.out} is out of date; run python -m si_toolkit.data.make_arithmetic", file=sys.stderr)
            return 1
        return 0
    from si_toolkit.safeio import atomic_write_text  # imported here: only writing needs it

    atomic_write_text(args.out, text)
    print(f"wrote {len(text.splitlines())} problems to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
