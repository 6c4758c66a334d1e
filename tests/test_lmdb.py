"""LMDB datasets: our writer and reader, DTRB-layout compatibility, and create-lmdb from a gt file."""

from pathlib import Path

import lmdb
import pytest

from textrec.data.lmdb_store import LmdbDataset, LmdbWriter, create_lmdb
from textrec.errors import DataError, RecordError

from imagegen import png_bytes, render_word


def test_round_trip(word_lmdb):
    path, words = word_lmdb
    dataset = LmdbDataset(path)
    assert len(dataset) == len(words)
    for index, word in enumerate(words):
        image, label = dataset.read_image(index)
        assert label == word
        assert image.mode == "L" and image.size[1] == 32
    assert [label for _, label in dataset.labels()] == words


def test_reads_an_lmdb_written_by_another_tool(tmp_path):
    """The layout of deep-text-recognition-benchmark's create_lmdb_dataset.py, written with raw lmdb calls."""
    path = tmp_path / "dtrb"
    env = lmdb.open(str(path), map_size=1 << 26)
    cache = {}
    words = ["alpha", "BETA", "42"]
    for i, word in enumerate(words, start=1):
        cache[("image-%09d" % i).encode()] = png_bytes(render_word(word), "JPEG")
        cache[("label-%09d" % i).encode()] = word.encode()
    cache["num-samples".encode()] = str(len(words)).encode()
    with env.begin(write=True) as txn:
        for key, value in cache.items():
            txn.put(key, value)
    env.close()
    dataset = LmdbDataset(path)
    assert len(dataset) == 3
    assert [dataset.read_image(i)[1] for i in range(3)] == words


def test_writer_grows_the_map(tmp_path):
    blob = bytes(200_000)
    with LmdbWriter(tmp_path / "big", initial_map_size=1 << 20, commit_every=4) as writer:
        for i in range(40):  # 8 MB into a 1 MB map
            writer.add(blob, f"w{i}")
    dataset = LmdbDataset(tmp_path / "big")
    assert len(dataset) == 40 and dataset.read(39) == (blob, "w39")


def test_missing_or_not_an_lmdb(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        LmdbDataset(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not an LMDB"):
        LmdbDataset(tmp_path / "plain")


def test_bad_records_name_the_record(tmp_path):
    path = tmp_path / "bad"
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"num-samples", b"3")
        txn.put(b"image-000000001", b"not an image")
        txn.put(b"label-000000001", b"abc")
        txn.put(b"image-000000002", png_bytes(render_word("ok")))
        txn.put(b"label-000000002", b"\xff\xfe")
    env.close()
    dataset = LmdbDataset(path)
    with pytest.raises(RecordError, match="record 1: not a readable image"):
        dataset.read_image(0)
    with pytest.raises(RecordError, match="record 2: label is not valid UTF-8"):
        dataset.read_image(1)
    with pytest.raises(RecordError, match="record 3: image key is missing"):
        dataset.read_image(2)


def _write_gt(folder: Path, lines: list[str]) -> Path:
    gt = folder / "gt.txt"
    gt.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return gt


def test_create_lmdb_reports_bad_lines(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for word in ("one", "two"):
        render_word(word).save(images / f"{word}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    gt = _write_gt(
        tmp_path,
        ["images/one.png\tone", "images/missing.png\tx", "no tab here", "images/broken.png\tbroken", "images/two.png\ttwo",
         "images/one.png\t"],
    )
    skipped = []
    report = create_lmdb(gt, tmp_path / "out", on_skip=lambda line, reason: skipped.append(line))
    assert report.written == 2
    assert skipped == [2, 3, 4, 6]
    dataset = LmdbDataset(tmp_path / "out")
    assert [dataset.read_image(i)[1] for i in range(2)] == ["one", "two"]
    assert not (tmp_path / "out.partial").exists()


def test_create_lmdb_with_root_and_refuses_non_empty_output(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    render_word("abc").save(root / "a.png")
    (tmp_path / "elsewhere").mkdir()
    gt = _write_gt(tmp_path / "elsewhere", ["a.png\tabc"])
    report = create_lmdb(gt, tmp_path / "out", root=root)
    assert report.written == 1
    with pytest.raises(DataError, match="not an empty folder"):
        create_lmdb(gt, tmp_path / "out", root=root)
