"""The keyword matcher on hand-written answers (paper section 3.2 and the documented extensions)."""

import re

import pytest

from facephi.scoring.keywords import KEYWORDS, NEGATORS, KeywordMatch, match_answer, predict_class
from facephi.data.templates import ANSWER_TEMPLATES, CAPTION_TEMPLATES, INSTRUCTIONS
from facephi.labels import CLASS_TO_INDEX, CLASSES, canonical_class, display_name

H, S, F, A, N = (CLASS_TO_INDEX[c] for c in ("happiness", "sadness", "fear", "anger", "neutral"))
SU, D, C = (CLASS_TO_INDEX[c] for c in ("surprise", "disgust", "contempt"))


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
    match = match_answer("Happy? This face is sad, maybe angry, certainly sad.")
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


# --- word forms -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "word, expected",
    [
        ("surprised", "surprise"), ("surprising", "surprise"), ("surprisingly", "surprise"),
        ("surprises", "surprise"), ("startled", "surprise"), ("astonished", "surprise"),
        ("scared", "fear"), ("frightened", "fear"), ("fearful", "fear"), ("terrified", "fear"),
        ("frightening", "fear"), ("afraid", "fear"), ("feared", "fear"),
        ("happy", "happiness"), ("happily", "happiness"), ("joyfully", "happiness"),
        ("cheerful", "happiness"), ("delighted", "happiness"),
        ("angry", "anger"), ("angrily", "anger"), ("furious", "anger"), ("enraged", "anger"),
        ("annoyed", "anger"),
        ("disgusted", "disgust"), ("disgusting", "disgust"), ("disgustedly", "disgust"),
        ("revolted", "disgust"),
        ("sad", "sadness"), ("sadly", "sadness"), ("saddened", "sadness"), ("sorrowful", "sadness"),
        ("unhappy", "sadness"), ("gloomy", "sadness"),
        ("contemptuous", "contempt"), ("contemptuously", "contempt"), ("scornful", "contempt"),
        ("disdainful", "contempt"), ("sneering", "contempt"),
        ("neutrally", "neutral"), ("calmly", "neutral"), ("expressionless", "neutral"),
    ],
)
def test_word_forms_map_to_their_class(word, expected):
    for answer in (f"The face looks {word}.", f"{word.capitalize()}!", f"It is {word.upper()}"):
        match = match_answer(answer)
        assert match.mentioned == (CLASS_TO_INDEX[expected],), answer
        assert match.negated == ()


@pytest.mark.parametrize(
    "word",
    ["fearless", "unafraid", "unsurprised", "surpriseless", "happenstance", "angering",
     "madness", "disgustless", "contemptible"],
)
def test_words_merely_containing_a_keyword_name_no_class(word):
    assert match_answer(f"A {word} face.").missed


def test_keyword_table_has_no_duplicates_and_no_negators():
    words = [w for ws in KEYWORDS.values() for w in ws]
    assert len(words) == len(set(words))                # no word under two classes (or twice)
    assert not set(words) & NEGATORS
    assert all(re.fullmatch(r"[a-z]+", w) for w in words)


# --- negation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, mentioned, negated",
    [
        ("She is not afraid.", (), (F,)),                              # negated: names no class
        ("The face is not happy but sad.", (S,), (H,)),                # "but" ends the clause
        ("I am not sure, but it looks happy.", (H,), ()),              # other clause
        ("Not sure, happy.", (H,), ()),                                # comma ends the clause
        ("I am not sure it is happy.", (H,), ()),                      # "not" 4 words away
        ("It does not appear to be happy.", (), (H,)),                 # "to", "be" are filler
        ("This is not the emotion of Happiness.", (), (H,)),           # "the", "of" are filler
        ("It is not at all happy.", (), (H,)),
        ("not very happy", (), (H,)),
        ("The face isn't happy; it is sad.", (S,), (H,)),
        ("The face isn\u2019t happy; it is sad.", (S,), (H,)),       # typographic apostrophe
        ("It doesnt look angry", (), (A,)),                            # apostrophe omitted
        ("Neither happy nor sad.", (), (H, S)),
        ("It shows no anger, fear or disgust; it is neutral.", (N,), (A, F, D)),  # negated list
        ("The face is happy, not sad.", (H,), (S,)),                   # negation after the keyword
        ("Not only happy but also surprised.", (H, SU), ()),           # "not only" is no negation
        ("There is no doubt: happy.", (H,), ()),
        ("It is without a doubt happy.", (H,), ()),
        ("Not surprisingly, the face looks sad.", (S,), (SU,)),
        ("not unhappy", (), (S,)),
        ("not fear-stricken", (), (F,)),
        ("Not happy? No, actually happy.", (H,), (H,)),                # negated, then named
        ("Happy - not angry.", (H,), (A,)),                            # spaced dash ends a clause
    ],
)
def test_negation(answer, mentioned, negated):
    match = match_answer(answer)
    assert match.mentioned == mentioned and match.negated == negated
    assert match.missed == (not mentioned)


@pytest.mark.parametrize(
    "negator",
    ["not", "no", "never", "nor", "without", "hardly", "barely", "scarcely", "cannot", "isn't",
     "doesn't", "wasn't", "aren't", "can't", "won't", "don't", "didn't", "couldn't"],
)
def test_every_negator_negates_within_the_window(negator):
    assert match_answer(f"It {negator} shows fear.").negated == (F,)
    assert match_answer(f"It {negator} shows fear.").missed
    # Three counted words between: outside the window, fear is named.
    assert match_answer(f"It {negator} seems like it shows fear.").mentioned == (F,)


def test_negated_answers_are_wrong_under_both_rules():
    match = match_answer("This face is not sad.")
    assert match.predicted is None and not match.correct(S) and not match.contains(S)
    assert predict_class("This face is not sad.") is None
    assert KeywordMatch((H,)).negated == ()                          # old constructor still works


# --- the paper's templates ----------------------------------------------------------------------


def test_all_answer_templates_map_to_their_class():
    assert len(ANSWER_TEMPLATES) == 10 and len(CLASSES) == 8
    for template in ANSWER_TEMPLATES:
        for index, name in enumerate(CLASSES):
            for filled in (template.format(emotion=display_name(name)), template.format(emotion=name)):
                match = match_answer(filled)
                assert match.mentioned == (index,) and match.negated == (), filled
                assert match.correct(index) and match.contains(index)


def test_caption_templates_map_to_their_class():
    for template in CAPTION_TEMPLATES:
        for index, name in enumerate(CLASSES):
            assert match_answer(template.format(emotion=name)).mentioned == (index,)


def test_instructions_name_no_class():
    assert len(INSTRUCTIONS) == 15
    for instruction in INSTRUCTIONS:
        match = match_answer(instruction)
        assert match.missed and match.negated == (), instruction
