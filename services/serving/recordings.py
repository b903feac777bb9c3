"""One result per recording: the catalog has one row per release of a song ("Shake It Off" on the
album and on a deluxe edition, "Stereo Hearts (feat. Adam Levine)" three times, "- Remastered 2011"
re-issues), so a page of ten can show the same song three times.

`recording_key` names the song a row is a version of: the title without its version suffix and
featuring credits, plus the primary artist. It deliberately matches the relevance benchmark's
definition of "the same recording" (`retrievers.text.strip_version` + primary artist), so the
collapse and the metric agree on what a duplicate is. Remixes, live cuts, edits and remasters by the
same primary artist collapse into one entry (the best-scored one is shown, the others are listed as
its versions); a cover or a different song with the same title by another artist keeps its own key.

`collapse` is pure: it takes ranked ids with their scores and two lookups, so the pipeline, the
benchmarks and the tests all call the same code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from retrievers.text import normalize, strip_version

# A featuring credit outside brackets ("Big Moe featuring Z-Ro", "Song feat. X"). Not "with": it is
# part of many names ("Sleeping With Sirens", "Here With Me"), and "(with X)" in titles is bracketed,
# which strip_version already removes. Commas, "x", "/" and "&" are kept: in this catalog they are
# mostly inside one act's name ("Earth, Wind & Fire", "AC/DC", "Chloe x Halle"), and every release of
# a song carries the same credit, so keeping them never splits a recording.
_FEATURING = re.compile(r"\s(?:feat\.?|ft\.|featuring)[\s,]|;", re.IGNORECASE)


def primary_credit(artist: str) -> str:
    """'Big Moe featuring Z-Ro' -> 'Big Moe', 'Khea;Omar Varela' -> 'Khea': as written."""
    return _FEATURING.split(artist, maxsplit=1)[0].strip() or artist.strip()


def primary_artist(artist: str) -> str:
    """'Big Moe featuring Z-Ro' -> 'big moe', 'Khea;Omar Varela' -> 'khea'. Normalized."""
    return normalize(primary_credit(artist)) or normalize(artist)


def base_title(title: str) -> str:
    """'Stereo Hearts (feat. Adam Levine)' -> 'stereo hearts'; 'Help! - Remastered 2009' -> 'help';
    'Song feat. X' -> 'song'. Titles that are only a bracket ('(Intro)') keep their text."""
    main = _FEATURING.split(strip_version(title), maxsplit=1)[0]
    return normalize(main) or normalize(title)


def recording_key(title: str, artist: str) -> str:
    """The song a catalog row is a version of: '<base title>\\x1f<primary artist>'."""
    return f"{base_title(title)}\x1f{primary_artist(artist)}"


def collapse(ids: Sequence[str], scores: Sequence[float], key_of: Callable[[str], str],
             popularity_of: Callable[[str], float]) -> list[tuple[str, list[str]]]:
    """Groups ranked ids by recording. Each group is represented by its best-scored id (higher
    popularity breaks exact score ties, then the earlier position), and the groups are ordered by
    that representative's score. Returns [(representative id, [other version ids, best first])].

    `ids` need not be sorted; duplicates of one id count once."""
    if len(ids) != len(scores):
        raise ValueError(f"{len(ids)} ids but {len(scores)} scores")
    order = sorted(range(len(ids)), key=lambda i: (-float(scores[i]), -float(popularity_of(ids[i])), i))
    return collapse_ranked([ids[i] for i in order], key_of)


def collapse_ranked(ranked_ids: Sequence[str], key_of: Callable[[str], str]) -> list[tuple[str, list[str]]]:
    """collapse() of ids already in their final order (a search's ranking, pins placed): each
    recording is represented by its first id. One pass, no sort: this runs on every search."""
    groups: dict[str, list[str]] = {}
    for tid in dict.fromkeys(ranked_ids):
        key = key_of(tid)
        members = groups.get(key)
        if members is None:
            groups[key] = [tid]
        else:
            members.append(tid)
    return [(members[0], members[1:]) for members in groups.values()]
