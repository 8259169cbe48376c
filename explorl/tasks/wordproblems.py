"""Math word problems in the GSM8K style, generated locally: a data file to try explorl's file
kinds, chat templates and the ``math`` verifier on, with nothing downloaded.

``explorl make-data math --out FILE`` writes JSONL rows ``{"question", "answer", "solution"}``:
the answer a number or a reduced fraction in LaTeX (``\\frac{3}{4}``), the solution worked
steps ending in GSM8K's ``#### <answer>`` line.
"""
from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Ken", "Alexis", "Tina", "Carla"]
ITEMS = ["clips", "apples", "stickers", "books", "pencils", "marbles", "cookies", "stamps"]


def _sum(rng):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(5, 90), rng.randint(5, 90)
    return (f"{name} had {a} {item} and got {b} more. How many {item} does {name} have now?",
            str(a + b), f"{name} has {a} + {b} = {a + b} {item}.")


def _difference(rng):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a = rng.randint(30, 150)
    b = rng.randint(1, a - 1)
    return (f"{name} had {a} {item} and gave away {b}. How many {item} are left?",
            str(a - b), f"{a} - {b} = {a - b} {item} are left.")


def _rate(rng):
    name = rng.choice(NAMES)
    rate, hours = rng.randint(8, 30), rng.randint(2, 9)
    return (f"{name} earns ${rate} an hour and works {hours} hours. How many dollars does {name} earn?",
            str(rate * hours), f"{name} earns {rate} * {hours} = {rate * hours} dollars.")


def _two_step(rng):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    per_box, boxes, extra = rng.randint(3, 12), rng.randint(2, 9), rng.randint(1, 20)
    total = per_box * boxes + extra
    return (f"{name} buys {boxes} boxes of {item} with {per_box} in each box, then finds {extra} more. "
            f"How many {item} does {name} have?",
            str(total), f"The boxes hold {boxes} * {per_box} = {per_box * boxes}. Then {per_box * boxes} + {extra} "
                        f"= {total} {item}.")


def _fraction(rng):
    name = rng.choice(NAMES)
    slices = rng.choice([4, 6, 8, 10, 12])
    eaten = rng.randint(1, slices - 1)
    part = Fraction(eaten, slices)
    answer = str(part.numerator) if part.denominator == 1 else f"\\frac{{{part.numerator}}}{{{part.denominator}}}"
    return (f"A pizza is cut into {slices} equal slices and {name} eats {eaten} of them. What fraction of the "
            f"pizza does {name} eat?",
            answer, f"{name} eats {eaten}/{slices} = {part.numerator}/{part.denominator} of the pizza.")


KINDS = (_sum, _difference, _rate, _two_step, _fraction)


def word_problem(rng: random.Random) -> dict:
    question, answer, steps = rng.choice(KINDS)(rng)
    return {"question": question, "answer": answer, "solution": f"{steps}\n#### {answer}"}


def write_word_problems(path: str | Path, rows: int, seed: int = 0) -> Path:
    """``rows`` distinct problems, the same for the same seed."""
    if rows < 1:
        raise ValueError(f"--rows must be >= 1, got {rows}")
    rng, seen, out = random.Random(seed), set(), []
    for _ in range(100 * rows):
        row = word_problem(rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            out.append(row)
            if len(out) == rows:
                break
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Questions and solutions, for training a tokenizer that can spell them."""
    rng = random.Random(seed)
    return [f"{r['question']} {r['solution']} \\boxed{{{r['answer']}}}" for r in (word_problem(rng) for _ in range(n))]
