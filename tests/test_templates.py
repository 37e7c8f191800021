"""The paper's templates (appendix A.1) are present verbatim and well-formed."""

from facephi.data.templates import (
    ANSWER_TEMPLATES,
    CAPTION_TEMPLATES,
    INSTRUCTIONS,
    LANDMARK_TOKEN,
    PAD_TOKEN,
    SYSTEM_PROMPT,
)
from facephi.labels import CLASSES, display_name


def test_counts_and_uniqueness():
    assert len(INSTRUCTIONS) == 15 and len(set(INSTRUCTIONS)) == 15
    assert len(ANSWER_TEMPLATES) == 10 and len(set(ANSWER_TEMPLATES)) == 10


def test_verbatim_text_from_the_paper():
    assert SYSTEM_PROMPT == ("Below is a conversation between a curious user and an AI agent. The assistant gives "
                             "helpful, detailed, and polite answers to the user's questions,")
    assert INSTRUCTIONS[0] == "Can you identify the emotion displayed by this 3D facial landmark?"
    assert INSTRUCTIONS[12] == "Determine the emotion is shown by this 3D facial landmark."  # the paper's grammar
    assert INSTRUCTIONS[14] == "Review the expression of this 3D facial landmark and judge its emotion."
    assert ANSWER_TEMPLATES[0].format(emotion="Happiness") == (
        "It is probable that this 3D facial landmark was created with the intention of embodying the emotion of "
        "Happiness.")
    assert ANSWER_TEMPLATES[3].format(emotion="Happiness") == (
        "There is a good chance that the 3D facial landmark was specifically made to emulate the Happiness emotion.")


def test_answers_name_the_class_exactly_once():
    for template in ANSWER_TEMPLATES:
        assert template.count("{emotion}") == 1
        for name in CLASSES:
            assert template.format(emotion=display_name(name)).count(display_name(name)) == 1


def test_captions_and_special_tokens():
    assert CAPTION_TEMPLATES[0].format(emotion="happiness") == "The facial landmark shows emotion of happiness."
    assert len(CAPTION_TEMPLATES) >= 3 and all(t.count("{emotion}") == 1 for t in CAPTION_TEMPLATES)
    assert LANDMARK_TOKEN == "<landmark>" and PAD_TOKEN == "[PAD]"
