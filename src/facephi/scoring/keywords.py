"""The paper's keyword matching: which emotion class does a free-text answer name?

The paper (section 3.2) counts an answer as correct when it contains the keyword of the true
class, and as wrong when it contains no class keyword. It does not say what happens when an
answer names several classes; this module makes that explicit:

* Every class has a list of **keywords**: the canonical name, its inflections (plural,
  adjective, adverb, comparative) and close synonyms an LLM is likely to use. Matching is
  case-insensitive and on **whole words** only (``\\b…\\b``), so a word that merely contains a
  keyword is not a match: ``"fearless"`` is not *fear* (it means the opposite), ``"unhappy"`` is
  *sadness*, not *happiness*, ``"madness"`` is not *anger*. Comparatives and superlatives that
  keep the meaning are listed explicitly (``"sadder"``, ``"saddest"``, ``"happier"``,
  ``"angrier"``). Hyphenated compounds match on their parts (``"fear-stricken"`` is *fear*).
  Negation is **not** interpreted (``"not happy"`` is *happiness*), as in the paper's scheme.
* **Predicted class** (strict rule, the default everywhere in facephi): the class whose keyword
  appears *first* in the answer. An answer naming two or more *different* classes is flagged
  ``ambiguous``; under the strict rule it is correct only when its first-mentioned class is the
  true one.
* **Lenient rule** (the paper's literal wording, reported alongside as ``accuracy_contains``):
  correct when the true class's keyword appears anywhere in the answer, whatever else it names.
* No keyword at all: predicted class ``None`` — a miss, counted as wrong by both rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from facephi.labels import CLASS_TO_INDEX, CLASSES

KEYWORDS: dict[str, tuple[str, ...]] = {
    "neutral": (
        "neutral", "neutrals", "neutrality", "neutrally", "calm", "calmness", "expressionless",
        "impassive", "emotionless",
    ),
    "happiness": (
        "happiness", "happy", "happier", "happiest", "happily", "joy", "joys", "joyful",
        "joyfulness", "joyous", "cheerful", "glad", "delight", "delighted",
    ),
    "sadness": (
        "sadness", "sad", "sadder", "saddest", "sadly", "unhappy", "unhappiness", "sorrow",
        "sorrowful", "grief", "melancholy", "despair",
    ),
    "surprise": (
        "surprise", "surprises", "surprised", "suprise", "suprised", "astonished",
        "astonishment", "amazed", "amazement", "shocked",
    ),
    "fear": (
        "fear", "fears", "fearful", "fearfully", "fearfulness", "afraid", "scared", "frightened",
        "fright", "terrified", "terror",
    ),
    "disgust": (
        "disgust", "disgusts", "disgusted", "disgusting", "revulsion", "repulsed", "revolted",
    ),
    "anger": (
        "anger", "angers", "angered", "angry", "angrier", "angriest", "angrily", "mad", "rage",
        "furious", "fury", "irate",
    ),
    "contempt": (
        "contempt", "contempts", "contemptuous", "contemptuously", "contemptful", "scorn",
        "scornful", "disdain", "disdainful",
    ),
}
"""Keywords of every class (lower case, whole words). Keys are exactly ``facephi.labels.CLASSES``."""

if tuple(KEYWORDS) != CLASSES:  # pragma: no cover - guards the table against label edits
    raise RuntimeError("KEYWORDS must list exactly facephi.labels.CLASSES, in order")

_WORD_TO_CLASS: dict[str, int] = {
    word: CLASS_TO_INDEX[name] for name, words in KEYWORDS.items() for word in words
}
if len(_WORD_TO_CLASS) != sum(map(len, KEYWORDS.values())):  # pragma: no cover
    raise RuntimeError("a keyword is listed under two classes")

# One alternation, longest words first; \b on both sides makes every match a whole word.
_PATTERN = re.compile(
    r"\b(" + "|".join(re.escape(w) for w in sorted(_WORD_TO_CLASS, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class KeywordMatch:
    """The classes an answer names.

    ``mentioned`` holds the distinct class indices in order of first mention; ``predicted`` is the
    first of them (strict rule) or ``None`` when the answer names no class.
    """

    mentioned: tuple[int, ...]

    @property
    def predicted(self) -> int | None:
        return self.mentioned[0] if self.mentioned else None

    @property
    def ambiguous(self) -> bool:
        """True when the answer names two or more different classes."""
        return len(self.mentioned) > 1

    @property
    def missed(self) -> bool:
        """True when the answer names no class at all."""
        return not self.mentioned

    def correct(self, true_label: int) -> bool:
        """Strict rule: the first-mentioned class is the true one."""
        return self.predicted == int(true_label)

    def contains(self, true_label: int) -> bool:
        """Lenient rule (the paper's wording): the true class is named anywhere."""
        return int(true_label) in self.mentioned


def match_answer(answer: str) -> KeywordMatch:
    """Find the emotion classes named in ``answer`` (see the module docstring for the rules)."""
    mentioned: list[int] = []
    for found in _PATTERN.finditer(answer):
        index = _WORD_TO_CLASS[found.group(1).lower()]
        if index not in mentioned:
            mentioned.append(index)
    return KeywordMatch(tuple(mentioned))


def predict_class(answer: str) -> int | None:
    """Index of the first class named in ``answer`` (strict rule), ``None`` when none is."""
    return match_answer(answer).predicted
