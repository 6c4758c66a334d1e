"""The benchmark registry: names, aliases, and where LMDBs are looked for."""

import pytest

from imagegen import png_bytes, render_word, write_lmdb
from textrec.data import benchmarks
from textrec.errors import BenchmarkNotFoundError


def test_names_and_aliases():
    assert benchmarks.canonical_name("IC13") == "IC13_857"
    assert benchmarks.canonical_name("ic13_1015") == "IC13_1015"
    assert benchmarks.canonical_name("iiit5k") == "IIIT5k_3000"
    assert set(benchmarks.BENCHMARKS) == {
        "IIIT5k_3000", "SVT", "IC03_860", "IC03_867", "IC13_857", "IC13_1015", "IC15_1811", "IC15_2077", "SVTP", "CUTE80",
    }
    with pytest.raises(BenchmarkNotFoundError, match="known: "):
        benchmarks.canonical_name("MNIST")


def test_locate_searches_the_usual_layouts(tmp_path):
    with pytest.raises(BenchmarkNotFoundError) as info:
        benchmarks.locate("IC13", tmp_path)
    assert str(tmp_path / "benchmarks" / "IC13_857") in str(info.value)
    write_lmdb(tmp_path / "evaluation" / "SVT", [(png_bytes(render_word("a")), "a")])
    write_lmdb(tmp_path / "benchmarks" / "IC13_857", [(png_bytes(render_word("a")), "a")])
    assert benchmarks.locate("SVT", tmp_path) == tmp_path / "evaluation" / "SVT"
    assert [name for name, _ in benchmarks.available(tmp_path)] == ["SVT", "IC13_857"]
