"""The project's conventions: expression label order and the five facial landmarks.

Every dataset reader maps its native label ids to :data:`EXPRESSIONS` through an explicit table
(:class:`LabelMap`) and reports what it dropped; nothing relies on a comment to say what an int means.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Mapping

#: Canonical order (RAF-DB's, used by the CD-FER benchmark and AGLRLS code), 0-based.
EXPRESSIONS: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
NUM_CLASSES = len(EXPRESSIONS)

#: Five landmarks in image coordinates; "left" is the point with the smaller x on a frontal, unflipped face
#: (the MTCNN / CD-FER convention).
LANDMARKS: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
NUM_LANDMARKS = len(LANDMARKS)

#: Index permutation that a horizontal flip applies to the landmark rows (left <-> right).
FLIP_PERMUTATION: tuple[int, ...] = (1, 0, 2, 4, 3)

#: The seven feature streams of the CD-FER global-local extractor, in order.
STREAMS: tuple[str, ...] = ("global",) + LANDMARKS + ("fused",)

UNKNOWN = -1


def expression_index(name: str) -> int:
    """Index of an expression name (case-insensitive; a few common synonyms accepted)."""
    key = name.strip().lower()
    key = _SYNONYMS.get(key, key)
    try:
        return EXPRESSIONS.index(key)
    except ValueError:
        raise KeyError(f"unknown expression {name!r}; known: {', '.join(EXPRESSIONS)}") from None


_SYNONYMS = {
    "surprised": "surprise", "fearful": "fear", "afraid": "fear", "disgusted": "disgust",
    "happy": "happiness", "happiness": "happiness", "joy": "happiness", "sad": "sadness",
    "angry": "anger", "neutral": "neutral",
}


@dataclass(frozen=True)
class LabelMap:
    """Maps one dataset's native labels to :data:`EXPRESSIONS`.

    ``table`` sends each native label to a canonical index; ``dropped`` lists native labels that have no place
    in the seven classes (contempt, none, uncertain, non-face, ...), each with the reason reported.
    A native label in neither is an error, never a silent guess.
    """

    dataset: str
    table: Mapping[Hashable, int]
    dropped: Mapping[Hashable, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for native, idx in self.table.items():
            if not 0 <= idx < NUM_CLASSES:
                raise ValueError(f"{self.dataset}: native label {native!r} maps to {idx}, outside 0..{NUM_CLASSES - 1}")
        both = set(self.table) & set(self.dropped)
        if both:
            raise ValueError(f"{self.dataset}: labels both mapped and dropped: {sorted(map(str, both))}")

    def __call__(self, native: Hashable, source: str = "") -> int | None:
        """Canonical index, or ``None`` for a label this dataset drops. Raises on an unknown label."""
        if native in self.table:
            return self.table[native]
        if native in self.dropped:
            return None
        where = f" in {source}" if source else ""
        known = ", ".join(map(repr, list(self.table) + list(self.dropped)))
        raise ValueError(f"{self.dataset}: label {native!r}{where} is not a known label (known: {known})")

    def map_all(self, natives: Iterable[Hashable], source: str = "") -> tuple[list[int | None], Counter]:
        """Map many labels; returns the mapped list and a Counter of drop reasons."""
        out: list[int | None] = []
        reasons: Counter = Counter()
        for n in natives:
            v = self(n, source)
            if v is None:
                reasons[f"{n!r}: {self.dropped[n]}"] += 1
            out.append(v)
        return out, reasons

    @classmethod
    def from_names(cls, dataset: str, names: Mapping[Hashable, str], dropped: Mapping[Hashable, str] | None = None):
        """Build from native label -> expression name (e.g. ``{1: "surprise", ...}``)."""
        return cls(dataset, {k: expression_index(v) for k, v in names.items()}, dict(dropped or {}))
