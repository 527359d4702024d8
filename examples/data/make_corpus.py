"""Regenerate ``corpus.txt``, the small text corpus ``train_lm.py`` trains on.

The text is generated (no downloads, no licensing questions): short templated stories, arithmetic
facts and counting lines from a fixed seed. It has enough structure (a vocabulary of words, a
grammar, sums that are right) that a character-level LM's loss falls visibly within a few hundred
steps. ``python examples/data/make_corpus.py`` rewrites the file byte for byte.
"""

from __future__ import annotations

import pathlib
import random

NAMES = ["Ada", "Ben", "Cleo", "Dov", "Eli", "Fay", "Gus", "Hana", "Ivo", "June", "Kai", "Lena"]
ANIMALS = ["cat", "dog", "fox", "owl", "hare", "crow", "goat", "mole", "wren", "toad"]
ADJECTIVES = ["small", "quick", "sleepy", "brave", "quiet", "clever", "old", "young", "grey", "bold"]
PLACES = ["the river", "the hill", "the old barn", "the garden", "the forest", "the market",
          "the bridge", "the meadow", "the harbor", "the library"]
VERBS = ["walked to", "ran past", "looked at", "sang near", "slept by", "waited at",
         "jumped over", "painted", "found", "left"]
OBJECTS = ["a red apple", "a blue kite", "an old map", "a warm loaf", "a bright lamp",
           "a silver key", "a wooden box", "a paper boat", "a green leaf", "a long rope"]
TIMES = ["In the morning", "At noon", "In the evening", "At night", "On Sunday", "Later"]
FEELINGS = ["happy", "tired", "hungry", "curious", "calm", "proud"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve"]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def story(rng: random.Random) -> str:
    name, animal, adj = rng.choice(NAMES), rng.choice(ANIMALS), rng.choice(ADJECTIVES)
    place, other = rng.choice(PLACES), rng.choice(PLACES)
    lines = [
        f"{rng.choice(TIMES)}, {name} saw {article(adj)} {adj} {animal} near {place}.",
        f"The {animal} {rng.choice(VERBS)} {other} and {name} followed it.",
        f"There {name} found {rng.choice(OBJECTS)}.",
        f"{name} felt {rng.choice(FEELINGS)}, and the {adj} {animal} felt {rng.choice(FEELINGS)}.",
    ]
    return " ".join(lines[: rng.randint(2, 4)])


def arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    if rng.random() < 0.5:
        return f"{a} plus {b} is {a + b}."
    a, b = max(a, b), min(a, b)
    return f"{a} minus {b} is {a - b}."


def counting(rng: random.Random) -> str:
    start = rng.randint(0, 6)
    words = NUMBER_WORDS[start : start + rng.randint(3, 7)]
    return "Counting: " + ", ".join(words) + "."


def make_corpus(num_bytes: int = 120_000, seed: int = 0) -> str:
    rng = random.Random(seed)
    makers = [story, story, story, arithmetic, counting]
    lines, size = [], 0
    while size < num_bytes:
        line = rng.choice(makers)(rng)
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    path = pathlib.Path(__file__).with_name("corpus.txt")
    path.write_text(make_corpus())
    print(f"wrote {path} ({path.stat().st_size} bytes)")
