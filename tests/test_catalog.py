from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from retrievers.text import normalize, split_featuring, strip_version, tokens
from services.catalog import COLUMNS, Catalog, CatalogError, iter_tracks, synthesize, vocabulary

GOOD = ("6f807x0ima9a1j3VPbc7VN,I Don't Care (with Justin Bieber) - Loud Luxury Remix,Ed Sheeran,66,"
        "2oCs0DGTsRO98Gh5ZSl2Cx,"
        "I Don't Care (with Justin Bieber) [Loud Luxury Remix],2019-06-14,0.748,0.916,6,-2.634,1,0.0583,0.102,0,0.0653,"
        "0.518,122.036,194754,pop|edm,dance pop|pop edm")


def write(tmp_path: Path, *rows: str) -> Path:
    p = tmp_path / "cat.csv"
    p.write_text(",".join(COLUMNS) + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return p


def test_shipped_catalog_loads_every_row(catalog: Catalog) -> None:
    assert len(catalog) == 28356
    t = catalog.get("6f807x0ima9a1j3VPbc7VN")
    assert t is not None and t.artist == "Ed Sheeran" and t.year == 2019
    assert t.genres == ("pop", "edm") and t.subgenres == ("dance pop", "pop edm")
    assert t.featured_artists == ["Justin Bieber"]


def test_good_row_and_gzip(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD)
    gz = tmp_path / "cat.csv.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    assert [t.track_id for t in iter_tracks(p)] == [t.track_id for t in iter_tracks(gz)] == ["6f807x0ima9a1j3VPbc7VN"]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (GOOD.replace(",66,", ",166,"), "popularity"),
        (GOOD.replace(",66,", ",sixty,"), "popularity"),
        (GOOD.replace("Ed Sheeran", ""), "artist"),
        (GOOD.replace("6f807x0ima9a1j3VPbc7VN", "bad id!"), "track_id"),
        (GOOD.replace(",0.748,", ",1.7,"), "danceability"),
        (GOOD + ",extra", "row"),
    ],
)
def test_bad_row_names_line_and_field(tmp_path: Path, bad: str, field: str) -> None:
    p = write(tmp_path, GOOD.replace("6f807x0ima9a1j3VPbc7VN", "first"), bad)
    with pytest.raises(CatalogError) as exc:
        list(iter_tracks(p))
    assert exc.value.line == 3 and exc.value.field == field
    assert f"cat.csv:3: field '{field}'" in str(exc.value)


def test_skip_bad_rows_logs_and_continues(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = write(tmp_path, GOOD.replace(",66,", ",166,"), GOOD)
    tracks = list(iter_tracks(p, skip_bad_rows=True))
    assert len(tracks) == 1
    assert "skipping bad row" in caplog.text and ":2:" in caplog.text


def test_missing_header_column(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("track_id,track_name\nabc,x\n")
    with pytest.raises(CatalogError, match="track_artist"):
        list(iter_tracks(p))


def test_normalization() -> None:
    assert normalize("Beyoncé – Déjà Vu!!") == "beyonce deja vu"
    assert normalize("ＡＢＣ  Straße") == "abc strasse"
    assert normalize("Don't Stop Me Now") == "dont stop me now"
    assert normalize("AC/DC") == "ac dc"
    assert tokens("  ") == []
    assert split_featuring("Memories (feat. Nipsey Hussle & YG)") == ("Memories", ["Nipsey Hussle & YG"])
    assert split_featuring("Lose Yourself ft. Someone")[0] == "Lose Yourself"
    assert strip_version("Memories - Dillon Francis Remix") == "Memories"


def test_vocabulary(catalog: Catalog) -> None:
    vocab = vocabulary(catalog)
    assert "sheeran" in vocab["artist"] and "pop" in vocab["genre"] and "tayler" not in vocab["all"]


def test_synth_matches_schema_and_distributions(catalog: Catalog, tmp_path: Path) -> None:
    out = tmp_path / "syn.csv"
    synthesize(catalog, 5000, out, seed=1, progress=False)
    syn = Catalog.load(out)
    assert len(syn) == 5000
    real_genres = {g for t in catalog.tracks for g in t.genres}
    assert {g for t in syn.tracks for g in t.genres} <= real_genres
    mean_pop = sum(t.popularity for t in syn.tracks) / len(syn)
    real_pop = sum(t.popularity for t in catalog.tracks) / len(catalog)
    assert abs(mean_pop - real_pop) < 3
    synthesize(catalog, 5000, tmp_path / "again.csv", seed=1, progress=False)
    assert (tmp_path / "again.csv").read_bytes() == out.read_bytes()  # seeded: reproducible
