"""The paper's keyword matching: which emotion class does a free-text answer name?

The paper (section 3.2) counts an answer as correct when it contains the keyword of the true
class, and as wrong when it contains no class keyword. It does not say what happens when an
answer names several classes, nor how word forms or negations count; this module makes that
explicit:

* Every class has a list of **keywords**: the canonical name, its inflections (plural, verb
  forms, adjective, adverb, comparative) and close synonyms an LLM is likely to use
  (``"surprised"``, ``"surprising"``, ``"surprisingly"``, ``"scared"``, ``"frightened"``,
  ``"contemptuous"`` …). No word is listed under two classes. Matching is case-insensitive and on
  **whole words** only (``\\b…\\b``), so a word that merely contains a keyword is not a match:
  ``"fearless"`` is not *fear* (it means the opposite), ``"unhappy"`` is *sadness*, not
  *happiness*, ``"madness"`` is not *anger*. Comparatives and superlatives that keep the meaning
  are listed explicitly (``"sadder"``, ``"saddest"``, ``"happier"``, ``"angrier"``). Hyphenated
  compounds match on their parts (``"fear-stricken"`` is *fear*). A sentence adverb still names
  its class (``"Surprisingly, …"`` is a mention of *surprise*).
* **Negation** (our extension; the paper's literal scheme would count ``"not happy"`` as
  *happiness*): a keyword is *negated*, and is **not** a mention of its class, when a negator
  is among the **3 words before it in the same clause**. Negators: ``not``, ``no``, ``never``,
  ``nor``, ``neither``, ``without``, ``hardly``, ``barely``, ``scarcely``, ``cannot`` and every
  ``n't`` contraction (``isn't``, ``doesn't``, also written without the apostrophe). Filler
  words (articles, ``of``, ``to``, ``be``, intensifiers such as ``very``, ``at all``) do not
  count towards the 3 words, so ``"does not appear to be happy"`` and ``"is not the emotion of
  Happiness"`` are negated, while ``"I am not sure it is happy"`` (``not`` 4 words away) is
  *happiness*. A clause ends at ``. , ; : ! ? ( ) " —`` or a spaced dash, and before ``but``,
  ``yet``, ``although``, ``though``, ``however``, ``whereas``, ``while``, ``instead``: ``"not
  happy but sad"`` is *sadness*, ``"I am not sure, but it looks happy"`` is *happiness*.
  Negation carries through a list: a keyword separated from a negated keyword only by commas,
  slashes, ``or``, ``nor``, ``and`` is negated too (``"no anger, fear or disgust; it is neutral"``
  is *neutral*; ``"neither happy nor sad"`` names no class). ``not only``/``just``/``merely``/
  ``simply`` and ``no``/``without (a) doubt``/``question``/``wonder`` are not negations. Other
  negations (``"lacks happiness"``, double negatives) are not interpreted. Negated classes are
  reported in ``KeywordMatch.negated``.
* **Predicted class** (strict rule, the default everywhere in facephi): the class whose
  (non-negated) keyword appears *first* in the answer. An answer naming two or more *different*
  classes is flagged ``ambiguous``; under the strict rule it is correct only when its
  first-mentioned class is the true one.
* **Lenient rule** (the paper's literal wording, reported alongside as ``accuracy_contains``):
  correct when the true class's keyword appears (not negated) anywhere in the answer, whatever
  else it names.
* No keyword at all (or only negated ones): predicted class ``None`` — a miss, counted as wrong
  by both rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from facephi.labels import CLASS_TO_INDEX, CLASSES

KEYWORDS: dict[str, tuple[str, ...]] = {
    "neutral": (
        "neutral", "neutrals", "neutrality", "neutrally", "calm", "calmly", "calmness",
        "expressionless", "impassive", "impassively", "emotionless", "unemotional",
    ),
    "happiness": (
        "happiness", "happy", "happier", "happiest", "happily", "joy", "joys", "joyful",
        "joyfully", "joyfulness", "joyous", "joyously", "cheerful", "cheerfully", "cheerfulness",
        "glad", "gladly", "gladness", "delight", "delighted", "elated", "elation",
    ),
    "sadness": (
        "sadness", "sad", "sadder", "saddest", "sadly", "saddened", "unhappy", "unhappily",
        "unhappiness", "sorrow", "sorrows", "sorrowful", "sorrowfully", "grief", "grieving",
        "melancholy", "melancholic", "despair", "despairing", "despondent", "dejected",
        "downcast", "gloomy", "mournful",
    ),
    "surprise": (
        "surprise", "surprises", "surprised", "surprising", "surprisingly", "suprise",
        "suprised", "suprising", "astonished", "astonishment", "amazed", "amazement", "shocked",
        "startled", "astounded", "stunned",
    ),
    "fear": (
        "fear", "fears", "feared", "fearing", "fearful", "fearfully", "fearfulness", "afraid",
        "scare", "scared", "scary", "frighten", "frightened", "frightening", "fright",
        "terrified", "terrifying", "terror", "horror", "horrified", "dread", "panic", "panicked",
        "anxious", "anxiety", "worried",
    ),
    "disgust": (
        "disgust", "disgusts", "disgusted", "disgustedly", "disgusting", "disgustingly",
        "revulsion", "repulsed", "repulsion", "repelled", "revolted", "revolting", "nauseated",
    ),
    "anger": (
        "anger", "angers", "angered", "angry", "angrier", "angriest", "angrily", "mad", "rage",
        "raging", "enraged", "furious", "furiously", "fury", "irate", "infuriated", "outraged",
        "wrath", "annoyed", "annoyance", "irritated", "irritation",
    ),
    "contempt": (
        "contempt", "contempts", "contemptuous", "contemptuously", "contemptuousness",
        "contemptful", "scorn", "scornful", "scornfully", "disdain", "disdainful", "disdainfully",
        "derision", "derisive", "sneer", "sneering", "condescending",
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

NEGATION_WINDOW = 3
"""A negator negates a keyword when it is among this many (non-filler) words before it."""

NEGATORS: frozenset[str] = frozenset({
    "not", "no", "never", "nor", "neither", "without", "hardly", "barely", "scarcely", "cannot",
    # n't contractions written without the apostrophe (with it, any word ending in "n't" counts)
    "isnt", "arent", "wasnt", "werent", "doesnt", "dont", "didnt", "cant", "couldnt", "wont",
    "wouldnt", "shouldnt", "hasnt", "havent", "hadnt", "aint", "mustnt", "neednt",
})
"""Words that negate a following keyword (lower case; see the module docstring)."""

_FILLER: frozenset[str] = frozenset({
    "a", "an", "the", "of", "to", "be", "been", "being", "very", "so", "too", "at", "all",
    "any", "really", "quite", "particularly", "entirely", "overly", "especially",
})
"""Words skipped when counting the negation window ("not at all happy", "not the emotion of …")."""

_NOT_NEGATING_AFTER: frozenset[str] = frozenset({
    "only", "just", "merely", "simply", "doubt", "question", "wonder",
})
"""A negator followed (articles aside) by one of these is no negation: "not only", "no doubt"."""

_CLAUSE_BREAK = re.compile(
    r"[.,;:!?()\[\]{}\"“”…—–]|\s-+\s|\b(?:but|yet|although|though|however|whereas|while|instead)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_LIST_GAP = re.compile(r"(?:[\s,/&]|\b(?:or|nor|and)\b)+", re.IGNORECASE)
"""What may separate two list items for a negation to carry from one to the next."""


def _is_negator(word: str) -> bool:
    word = word.lower().replace("’", "'")
    return word in NEGATORS or word.endswith("n't")


def _negated_at(answer: str, start: int) -> bool:
    """Whether a negator stands within the window before ``answer[start:]``, in the same clause."""
    clause_start = 0
    for found in _CLAUSE_BREAK.finditer(answer, 0, start):
        clause_start = found.end()
    words = [w.lower() for w in _WORD.findall(answer, clause_start, start)]
    counted = [i for i, w in enumerate(words) if w not in _FILLER][-NEGATION_WINDOW:]
    for i in counted:
        if _is_negator(words[i]):
            following = [w for w in words[i + 1:] if w not in ("a", "an", "the")]
            if not (following and following[0] in _NOT_NEGATING_AFTER):
                return True
    return False


@dataclass(frozen=True)
class KeywordMatch:
    """The classes an answer names.

    ``mentioned`` holds the distinct class indices named (not negated), in order of first mention;
    ``predicted`` is the first of them (strict rule) or ``None`` when the answer names no class.
    ``negated`` holds the distinct classes whose keyword occurs negated ("not happy"), in order of
    first negated occurrence; a class may be in both when it is also named un-negated.
    """

    mentioned: tuple[int, ...]
    negated: tuple[int, ...] = ()

    @property
    def predicted(self) -> int | None:
        return self.mentioned[0] if self.mentioned else None

    @property
    def ambiguous(self) -> bool:
        """True when the answer names two or more different classes."""
        return len(self.mentioned) > 1

    @property
    def missed(self) -> bool:
        """True when the answer names no class at all (negated keywords do not count)."""
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
    negated: list[int] = []
    previous: tuple[int, bool] | None = None  # end and negation of the previous keyword
    for found in _PATTERN.finditer(answer):
        index = _WORD_TO_CLASS[found.group(1).lower()]
        is_negated = _negated_at(answer, found.start()) or (
            previous is not None and previous[1]
            and _LIST_GAP.fullmatch(answer, previous[0], found.start()) is not None
        )
        target = negated if is_negated else mentioned
        if index not in target:
            target.append(index)
        previous = (found.end(), is_negated)
    return KeywordMatch(tuple(mentioned), tuple(negated))


def predict_class(answer: str) -> int | None:
    """Index of the first class named in ``answer`` (strict rule), ``None`` when none is."""
    return match_answer(answer).predicted
