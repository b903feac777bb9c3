"""Text normalization shared by indexing and querying, so both sides fold text identically."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# "feat." credits live in titles ("Memories (feat. X)") and artists; they are noise for matching
# the main title but useful as extra artist text, so they are split out rather than dropped.
_FEAT = re.compile(r"[\(\[\-–]?\s*\b(?:feat\.?|ft\.?|featuring|with)\s+([^\)\]]+)[\)\]]?", re.IGNORECASE)
_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)
_WS = re.compile(r"\s+")
# Chars NFKD does not decompose into base + accent but users type as the ASCII look-alike.
_FOLD_EXTRA = str.maketrans({"ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th",
                             "ı": "i", "’": "'", "&": " and "})


@lru_cache(maxsize=65536)
def fold(text: str) -> str:
    """NFKC, casefold, accent-fold: 'Beyoncé' -> 'beyonce', 'ＡＢＣ' -> 'abc'."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_FOLD_EXTRA)
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def normalize(text: str) -> str:
    """Folded text with punctuation turned into spaces and whitespace collapsed.
    Apostrophes are removed rather than spaced so "don't" matches "dont"."""
    t = fold(text).replace("'", "")
    t = _NON_WORD.sub(" ", t).replace("_", " ")
    return _WS.sub(" ", t).strip()


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def split_featuring(title: str) -> tuple[str, list[str]]:
    """'Memories (feat. X & Y)' -> ('Memories', ['X & Y']). The main title keeps everything else."""
    credits = [m.group(1).strip() for m in _FEAT.finditer(title)]
    main = _FEAT.sub(" ", title)
    return _WS.sub(" ", main).strip(" -–"), credits


def strip_version(title: str) -> str:
    """'Memories - Dillon Francis Remix' -> 'Memories': the part people type when they search."""
    base = re.split(r"\s[-–]\s|\s\(|\s\[", title, maxsplit=1)[0]
    return base.strip() or title.strip()
