"""Text templates of the FacePhi paper (appendix A.1) and the alignment captions.

``INSTRUCTIONS`` is Table 2 verbatim (including its grammar), ``ANSWER_TEMPLATES`` follows
Table 3 with the class name as ``{emotion}`` (filled with the capitalised name, "Happiness"),
``SYSTEM_PROMPT`` is the paper's system prompt verbatim (it ends with a comma, as printed).
``CAPTION_TEMPLATES`` are the captions of the feature alignment (eq. 4), filled with the
lower-case class name; the first is the paper's, the others are ULIP-style variants that
are averaged in the text embedding space.
"""

from __future__ import annotations

SYSTEM_PROMPT = (
    "Below is a conversation between a curious user and an AI agent. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions,"
)

USER_PREFIX = "Users:"
"""Speaker tag before the landmark placeholder and the instruction (appendix A.1)."""

ASSISTANT_PREFIX = "AI:"
"""Speaker tag after which the answer starts (appendix A.1)."""

LANDMARK_TOKEN = "<landmark>"
"""Placeholder token (the paper's [LM PAD]) replaced by the projected landmark embedding."""

PAD_TOKEN = "[PAD]"
"""Padding token added to tokenizers without a pad token distinct from EOS."""

INSTRUCTIONS: tuple[str, ...] = (
    "Can you identify the emotion displayed by this 3D facial landmark?",
    "Look at this 3D facial landmark and judge the emotion it's showing.",
    "What emotion is being expressed by this 3D facial landmark?",
    "Determine the emotion depicted on this 3D facial landmark.",
    "Examine this 3D facial landmark and select the emotion it's exhibiting.",
    "Can you spot the emotion on this 3D facial landmark?",
    "Identify which emotion is portrayed on this 3D facial landmark.",
    "Which emotion is this 3D facial landmark expressing?",
    "Identify the emotion on this 3D facial landmark.",
    "Judge the emotion that this 3D facial landmark is displaying.",
    "Can you tell which emotion this 3D facial landmark is portraying?",
    "This 3D facial landmark is expressing an emotion.",
    "Determine the emotion is shown by this 3D facial landmark.",
    "Evaluate this 3D facial landmark and judge the emotion.",
    "Review the expression of this 3D facial landmark and judge its emotion.",
)
"""The 15 instructions of Table 2, verbatim."""

ANSWER_TEMPLATES: tuple[str, ...] = (
    "It is probable that this 3D facial landmark was created with the intention of embodying the emotion of {emotion}.",
    "It is likely that the 3D facial landmark was designed to capture the essence of the emotion {emotion}.",
    "There is a strong likelihood that the 3D facial landmark was developed to represent the emotion of {emotion}.",
    "There is a good chance that the 3D facial landmark was specifically made to emulate the {emotion} emotion.",
    "The 3D facial landmark was likely developed with the aim of symbolizing the {emotion} emotion.",
    "It is quite possible that the 3D facial landmark was crafted to convey the feeling of {emotion}.",
    "It is reasonable to assume that the 3D facial landmark was designed to embody {emotion}.",
    "The 3D facial landmark was crafted to convey the feeling of {emotion}.",
    "The 3D facial landmark was presumably crafted with the goal of reflecting the emotion of {emotion}.",
    "The 3D facial landmark was created with the express purpose of representing the emotion of {emotion}.",
)
"""The 10 answers of Table 3 with ``{emotion}`` in place of "Happiness"."""

CAPTION_TEMPLATES: tuple[str, ...] = (
    "The facial landmark shows emotion of {emotion}.",
    "A 3D facial landmark of a face showing {emotion}.",
    "A point cloud of a face expressing {emotion}.",
    "The facial landmarks of a person feeling {emotion}.",
    "A 3D face mesh with the emotion of {emotion}.",
    "A landmark model of a facial expression of {emotion}.",
)
"""Alignment captions (lower-case ``{emotion}``); the first one is the paper's."""

SCORE_TEMPLATES = ("first", "all")
"""Which answer templates class scoring uses: the first one, or the mean likelihood over all 10."""
