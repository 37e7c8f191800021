"""The keyword matcher on hand-written answers (paper section 3.2 and the documented extensions)."""

import pytest

from facephi.scoring.keywords import KEYWORDS, match_answer, predict_class
from facephi.labels import CLASS_TO_INDEX, CLASSES, canonical_class

H, S, F, A, N = (CLASS_TO_INDEX[c] for c in ("happiness", "sadness", "fear", "anger", "neutral"))


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("This landmark denotes an emotion of happiness.", "happiness"),  # the paper's example
        ("It is probable that this 3D facial landmark was created with the intention of "
         "embodying the emotion of Happiness.", "happiness"),
        ("HAPPY face", "happiness"),
        ("The person looks sad.", "sadness"),
        ("Clearly sadder than before", "sadness"),   # comparative keeps the meaning
        ("an unhappy expression", "sadness"),        # whole word: not "happy"
        ("Fears and worries", "fear"),               # plural
        ("She is afraid", "fear"),
        ("fear-stricken", "fear"),                   # hyphen splits words
        ("Surprised!", "surprise"),
        ("disgusted look", "disgust"),
        ("contemptuous smirk", "contempt"),
        ("ANGRY", "anger"),
        ("a neutral, calm face", "neutral"),
    ],
)
def test_single_class(answer, expected):
    match = match_answer(answer)
    assert match.predicted == CLASS_TO_INDEX[expected]
    assert not match.ambiguous and not match.missed


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "The 3D facial landmark was crafted to convey a feeling.",
        "A fearless expression",        # opposite of fear: not a match
        "madness",                      # contains "mad" but is not anger
        "saddle and shadows",           # contains "sad" as a substring only
        "happenstance angering",        # neither "happy" nor a listed anger form
    ],
)
def test_no_keyword_is_a_miss(answer):
    match = match_answer(answer)
    assert match.predicted is None and match.missed and not match.ambiguous
    assert not match.correct(H) and not match.contains(H)
    assert predict_class(answer) is None


def test_several_classes_first_mention_wins():
    match = match_answer("Not happy: this face is sad, maybe angry, certainly sad.")
    assert match.mentioned == (H, S, A)          # distinct, in order of first mention
    assert match.predicted == H and match.ambiguous
    assert match.correct(H) and not match.correct(S)        # strict rule
    assert match.contains(S) and match.contains(A)          # lenient (paper's wording)
    assert not match.contains(F)


def test_repeating_one_class_is_not_ambiguous():
    match = match_answer("Fear. Fearful. Afraid.")
    assert match.mentioned == (F,) and not match.ambiguous and match.correct(F)


def test_keyword_table_is_consistent_with_labels():
    assert tuple(KEYWORDS) == CLASSES
    for name, words in KEYWORDS.items():
        assert name in words                    # the canonical name is always a keyword
        assert all(w == w.lower() and w.strip() == w for w in words)
        assert predict_class(f"... {name.upper()} ...") == CLASS_TO_INDEX[name]
        assert canonical_class(name) == name
