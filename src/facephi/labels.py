"""The eight canonical emotion classes of FacePhi and their common synonyms."""

from __future__ import annotations

CLASSES: tuple[str, ...] = (
    "neutral",
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)
"""Canonical lower-case class names, in AffectNet's expression order 0-7."""

CLASS_TO_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}

SYNONYMS: dict[str, str] = {
    # neutral
    "neutral": "neutral", "neutrality": "neutral", "calm": "neutral", "none": "neutral",
    # happiness
    "happiness": "happiness", "happy": "happiness", "happily": "happiness", "joy": "happiness",
    "joyful": "happiness", "smile": "happiness", "smiling": "happiness",
    # sadness
    "sadness": "sadness", "sad": "sadness", "sorrow": "sadness", "unhappy": "sadness",
    # surprise
    "surprise": "surprise", "surprised": "surprise", "surprising": "surprise", "suprise": "surprise",
    # fear
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear", "fearfulness": "fear",
    # disgust
    "disgust": "disgust", "disgusted": "disgust", "disgusting": "disgust",
    # anger
    "anger": "anger", "angry": "anger", "mad": "anger", "rage": "anger",
    # contempt
    "contempt": "contempt", "contemptuous": "contempt", "contemptful": "contempt",
}


def canonical_class(name: str) -> str:
    """Map a class name or common synonym (any case, ``_``/``-``/spaces ignored) to its canonical name.

    Raises ``KeyError`` with the offending name when it is unknown.
    """
    key = name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    key = "".join(ch for ch in key if not ch.isdigit()) or key
    if key not in SYNONYMS:
        raise KeyError(name)
    return SYNONYMS[key]


def display_name(name: str) -> str:
    """The capitalised form the paper uses inside answers ("Happiness")."""
    return name[:1].upper() + name[1:]
