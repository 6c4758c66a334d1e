"""Reliability, second round (issue #16): concurrent runs, untrusted sizes, OS errors, special files, nothing overwritten.

The fault-injection suite behind docs/robustness.md (marked R there), one section per class of the issue:
1. one writer per run folder; 2. nothing of the user's is overwritten, partial output is removed;
3. sizes and values read from files are untrusted; 4. every OS error is one line, output paths are checked
before the work; 5. special files never hang; 6. create-lmdb; 7. resuming with other hyper-parameters.
A full disk is simulated without root: OSError injected into the write path (each errno), and a real
RLIMIT_FSIZE on a subprocess. Nothing here depends on timing or float kernels.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cliutil import assert_one_clear_line, error_lines, invoke
from imagegen import png_bytes, render_word, write_lmdb
from textrec.checkpoint import load_checkpoint, load_state

from textrec.data.lmdb_store import LmdbDataset
from textrec.errors import CheckpointError, ConfigError, DataError, TrainingError
from textrec.model import CRNN
from textrec.train import train

from test_train import TINY, Recorder, save_untrained_tiny, tiny_config

REPO = Path(__file__).resolve().parents[1]
WAIT = 180  # seconds: a generous bound on every subprocess
ARCH = ["--channels", ",".join(map(str, TINY["channels"])), "--hidden-size", TINY["hidden_size"]]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250", "PYTHONPATH": str(REPO)}


@pytest.fixture(autouse=True)
def never_hang():
    """A hang (a FIFO read, a loop over a corrupt count) fails the test instead of stopping the suite."""

    def alarm(signum, frame):
        raise TimeoutError("hung for 120 s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def words(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reliability")
    return write_lmdb(root / "words", [(png_bytes(render_word(w)), w) for w in ["cat", "door", "42", "gate", "lstm"]])


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_untrained_tiny(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "word.png"
    render_word("gate").save(path)
    return path


def train_args(data, output, *extra) -> list:
    return ["train", "--train-data", data, "--output", output, "--max-steps", 2, "--batch-size", 4, "--workers", 0,
            "--no-augment", "--device", "cpu", *ARCH, *extra]


def eval_args(model, data, *extra) -> list:
    return ["eval", "--checkpoint", model, "--data", data, "--device", "cpu", *extra]


def temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".partial"))]


# --- 1. one writer per run folder ----------------------------------------------------------------------------

HOLD_LOCK = "import sys, time; from textrec.files import RunLock; RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)"


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_stuck_lock(words, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], cwd=REPO, env=ENV, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        result = invoke(*train_args(words, run))
        assert_one_clear_line(result, str(run), "another `textrec train`", f"(process {holder.pid})", "another --output")
        assert os.listdir(run) == ["train.lock"]  # the refused command wrote nothing
        with pytest.raises(TrainingError, match="another `textrec train`"):
            train(tiny_config(words, run, val_data=[], max_steps=2))
    finally:
        holder.kill()
        holder.wait(timeout=WAIT)
        holder.stdout.close()
    # The kernel released the lock with the killed process: the next run goes ahead, and removes the file at its end.
    result = invoke(*train_args(words, run))
    assert result.exit_code == 0, result.output
    assert not (run / "train.lock").exists() and (run / "last.safetensors").is_file()


# --- 2. nothing of the user's is overwritten; partial output is removed ------------------------------------------

def test_train_refuses_a_folder_of_other_files_and_a_failed_fresh_run_leaves_nothing(words, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert_one_clear_line(invoke(*train_args(words, mine)), str(mine), "not a textrec run (notes.txt)", "--output")
    assert os.listdir(mine) == ["notes.txt"]
    # A fresh run that fails (here: no usable sample) removes what it wrote, and the folder if it made it.
    unusable = write_lmdb(tmp_path / "unusable", [(png_bytes(render_word("a")), "")])
    assert_one_clear_line(invoke(*train_args(unusable, tmp_path / "new")), "no usable samples")
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_clear_line(invoke(*train_args(unusable, empty)), "no usable samples")
    assert os.listdir(empty) == []


def test_samples_never_touches_the_users_files(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.png").write_bytes(b"precious")
    assert_one_clear_line(invoke("samples", mine, "--count", 2), str(mine), "did not write (photo.png)")
    assert os.listdir(mine) == ["photo.png"] and (mine / "photo.png").read_bytes() == b"precious"
    out = tmp_path / "samples"
    assert invoke("samples", out, "--count", 3).exit_code == 0
    assert invoke("samples", out, "--count", 2).exit_code == 0  # its own folder is reused; no stale image stays
    assert sorted(os.listdir(out)) == ["gt.txt", "word_001.png", "word_002.png"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(folder, count, seed, charset, max_frames=26):
        (Path(folder) / "word_001.png").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("textrec.synth.writer.write_sample_images", disk_full)
    assert_one_clear_line(invoke("samples", out, "--count", 2), str(out), "no space left on device")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous samples, untouched
    assert temp_files(tmp_path) == []


def test_eval_and_export_replace_only_what_they_wrote(words, model, tmp_path):
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    result = invoke(*eval_args(model, words, "--json", notes))
    assert_one_clear_line(result, str(notes), "file exists", "--overwrite")
    assert "1-NED" not in result.output  # refused before evaluating
    assert notes.read_text() == '{"mine": 1}'
    results = tmp_path / "new" / "folder" / "results.json"  # folders that do not exist yet are made
    for _ in range(2):  # the second time it replaces its own file
        result = invoke(*eval_args(model, words, "--json", results))
        assert result.exit_code == 0, result.output
    assert json.loads(results.read_text())[0]["samples"] == 5
    assert invoke(*eval_args(model, words, "--json", notes, "--overwrite")).exit_code == 0
    assert json.loads(notes.read_text())[0]["samples"] == 5

    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(b"the user's")
    assert_one_clear_line(invoke("export", model, copy), str(copy), "file exists", "--overwrite")
    assert copy.read_bytes() == b"the user's"
    assert invoke("export", model, copy, "--overwrite").exit_code == 0
    load_checkpoint(copy)


def test_synth_checks_its_outputs_before_rendering(tmp_path):
    sheet = tmp_path / "sheet.png"
    sheet.write_bytes(b"mine")
    assert_one_clear_line(invoke("synth", tmp_path / "out", "--count", 2, "--preview", sheet), str(sheet), "file exists")
    assert sheet.read_bytes() == b"mine" and not (tmp_path / "out").exists()
    staging = tmp_path / "out.partial"  # synth's staging name, which it removes as a stale leftover of its own
    staging.mkdir()
    (staging / "keep.txt").write_text("mine")
    assert_one_clear_line(invoke("synth", tmp_path / "out", "--count", 2), str(staging), "move it away")
    assert (staging / "keep.txt").read_text() == "mine"


# --- 3. sizes and values read from files are untrusted ---------------------------------------------------------

def test_a_corrupt_sample_count_is_refused_before_anything_loops(model, tmp_path):
    path = write_lmdb(tmp_path / "huge", [(png_bytes(render_word("ok")), "ok")] * 3)
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.put(b"num-samples", b"999999999999")
    env.close()
    with pytest.raises(DataError, match=r"'num-samples' is 999,999,999,999 but the LMDB holds only 7 keys"):
        LmdbDataset(path)
    assert_one_clear_line(invoke(*eval_args(model, path)), str(path), "'num-samples' is 999,999,999,999")
    assert_one_clear_line(invoke(*train_args(path, tmp_path / "run")), str(path), "'num-samples'")


def rewrite(source: Path, target: Path, field: str, value) -> Path:
    """A copy of a checkpoint with one metadata field changed: `model.hidden_size`, `preprocess.height`, `charset`, ..."""
    with safe_open(str(source), "pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if "." in field:
        part, key = field.split(".")
        values = json.loads(metadata[part])
        values[key] = value
        metadata[part] = json.dumps(values)
    else:
        metadata[field] = value
    save_file(tensors, str(target), metadata=metadata)
    return target


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model.hidden_size", 10**9, "model.hidden_size = 1000000000 (expected 1 to 8192)"),
        ("model.num_layers", 10**6, "model.num_layers = 1000000"),
        ("model.channels", [10**6] * 7, "model.channels = [1000000,"),
        ("model.in_channels", 3, "model.in_channels = 3"),
        ("model.dropout", 5, "model.dropout = 5"),
        ("model.hidden_size", 64, "weights do not fit this architecture"),  # in bounds, but not what the weights are
        ("model.rnn", "elman", "unknown recurrent mode 'elman'"),
        ("preprocess.height", 10**6, "preprocess.height = 1000000 (expected 32 to 1024)"),
        ("preprocess.width", "wide", "preprocess.width = 'wide'"),
        ("preprocess.std", 0, "preprocess.std = 0"),
        ("preprocess.mean", float("nan"), "preprocess.mean = nan"),
        ("charset", "", "charset is empty"),
        ("charset", "abcdefghijklmnopqrstuvwxyz012345678a", "repeated characters"),
        ("info", "[1, 2]", "info is list"),
    ],
)
def test_checkpoint_metadata_is_checked_before_anything_is_allocated(model, image, tmp_path, field, value, message):
    crafted = rewrite(model, tmp_path / "crafted.safetensors", field, value)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(crafted)
    assert str(info.value).startswith(f"{crafted}: ") and message in str(info.value), str(info.value)
    assert_one_clear_line(invoke("predict", "--checkpoint", crafted, "--device", "cpu", image), str(crafted), message)


def test_non_finite_weights_and_outputs_are_refused(words, model, image, tmp_path, monkeypatch):
    with safe_open(str(model), "pt") as handle:
        metadata, tensors = handle.metadata(), {name: handle.get_tensor(name) for name in handle.keys()}
    tensors["head.bias"][3] = float("nan")
    broken = tmp_path / "nan.safetensors"
    save_file(tensors, str(broken), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"non-finite values \(NaN or infinity\) in head.bias"):
        load_checkpoint(broken)
    result = invoke("predict", "--checkpoint", broken, "--device", "cpu", "--json", image)
    assert_one_clear_line(result, str(broken), "non-finite values")
    assert_one_clear_line(invoke("export", broken, tmp_path / "copy.safetensors"), "non-finite values")

    # Finite weights whose output is not (an overflow): that image gets an error line, never "confidence": NaN.
    def overflow(self, images):
        return torch.full((26, images.shape[0], 37), float("nan"))

    monkeypatch.setattr(CRNN, "forward", overflow)
    result = invoke("predict", "--checkpoint", model, "--device", "cpu", "--json", image, image)
    assert result.exit_code == 1
    assert len(error_lines(result.output)) == 2 and "model's output is not finite" in error_lines(result.output)[0]
    records = [line for line in result.output.splitlines() if line.startswith("{")]
    for line in records:
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in JSON output"))
    assert len(records) == 2 and all("error" in json.loads(line) for line in records)
    # eval: each such sample is counted wrong and listed, and the results file stays valid JSON.
    out = tmp_path / "results.json"
    result = invoke(*eval_args(model, words, "--json", out))
    assert result.exit_code == 0 and result.output.count("the model's output is not finite") == 5, result.output
    (record,) = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON output"))
    assert (record["samples"], record["correct"], len(record["failed"])) == (5, 0, 5)


# --- 4. OS errors are one line; output paths are checked before the work ---------------------------------------

FAULTS = [
    (errno.ENOSPC, "no space left on device"),
    (errno.EDQUOT, "disk quota exceeded"),
    (errno.EROFS, "read-only file system"),
    (errno.EACCES, "permission denied"),
    (errno.EIO, "input/output error"),
    (errno.ENODEV, "no such device"),
]


@pytest.fixture
def failing_writes(monkeypatch):
    """Make durable writes fail with an errno, as the file system would (fsync is where a full disk shows);
    `only`: just the files whose name holds it."""
    real_fsync = os.fsync

    def inject(number: int, only: str = ""):
        def fsync(fd):
            if only not in os.readlink(f"/proc/self/fd/{fd}"):
                return real_fsync(fd)
            raise OSError(number, os.strerror(number))

        monkeypatch.setattr(os, "fsync", fsync)

    return inject


@pytest.mark.parametrize("number, reason", FAULTS, ids=[errno.errorcode[n] for n, _ in FAULTS])
def test_write_faults_are_one_line_and_keep_the_old_file(words, model, tmp_path, failing_writes, number, reason):
    target = tmp_path / "copy.safetensors"
    target.write_bytes(b"old and complete")
    results = tmp_path / "results.json"
    failing_writes(number)
    assert_one_clear_line(invoke("export", model, target, "--overwrite"), f"{target}: cannot write ({reason})")
    assert target.read_bytes() == b"old and complete"
    result = invoke(*eval_args(model, words, "--json", results))
    assert_one_clear_line(result, f"{results}: cannot write ({reason})")
    assert "1-NED" in result.output  # the table is shown before the file fails
    assert temp_files(tmp_path) == [] and not results.exists()


def test_a_write_fault_in_training_is_one_line(words, tmp_path, failing_writes):
    run = tmp_path / "run"
    failing_writes(errno.ENOSPC, only="config.json")  # at the start
    assert_one_clear_line(invoke(*train_args(words, run)), f"{run}/config.json: cannot write (no space left on device)")
    assert not run.exists()  # a fresh run that failed leaves nothing
    failing_writes(errno.ENOSPC, only="resume.pt")  # at the first save
    assert_one_clear_line(invoke(*train_args(words, run)), f"{run}/resume.pt: cannot write (no space left on device)")
    assert not run.exists()
    failing_writes(errno.EDQUOT, only="last.safetensors")  # a later save of a run that has saved: its state stays
    result = invoke(*train_args(words, run, "--save-interval", 1, "--max-steps", 3))
    assert_one_clear_line(result, f"{run}/last.safetensors: cannot write (disk quota exceeded)")
    assert load_state(run / "resume.pt")["step"] == 1 and temp_files(run) == []


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _run_limited(args: list, limit: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=WAIT, preexec_fn=_file_size_limit(limit))


def test_a_real_file_size_limit_is_one_line(words, model, tmp_path):
    """The full disk for real, without root: RLIMIT_FSIZE below the size of a checkpoint."""
    run = tmp_path / "run"
    done = _run_limited(train_args(words, run), 200_000)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    (line,) = error_lines(done.stderr)
    assert f"{run}/resume.pt: cannot write (file too large" in line, line
    assert not run.exists()
    target = tmp_path / "copy.safetensors"
    target.write_bytes(b"old")
    done = _run_limited(["export", model, target, "--overwrite"], 100_000)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    (line,) = error_lines(done.stderr)
    assert f"{target}: cannot write (file too large" in line, line
    assert target.read_bytes() == b"old" and temp_files(tmp_path) == []


def test_bad_output_paths_fail_before_the_work(words, model, tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_one_clear_line(invoke(*train_args(words, a_file / "run")), f"{a_file} is not a folder")
    assert_one_clear_line(invoke(*train_args(words, a_file)), f"{a_file}: exists and is not a folder")
    result = invoke(*eval_args(model, words, "--json", a_file / "results.json"))
    assert_one_clear_line(result, f"{a_file} is not a folder")
    assert "1-NED" not in result.output  # nothing evaluated
    assert_one_clear_line(invoke(*eval_args(model, words, "--json", tmp_path)), f"{tmp_path}: is a folder")
    assert_one_clear_line(invoke("export", model, tmp_path), f"{tmp_path}: is a folder")
    gt = tmp_path / "gt.txt"
    gt.write_text("a.png\ta\n")
    assert_one_clear_line(invoke("create-lmdb", gt, a_file / "lmdb"), f"{a_file} is not a folder")
    # A read-only file system (as root in CI, permissions cannot be tried for real; the check asks the kernel).
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: os.fspath(path) != str(tmp_path) and real_access(path, mode))
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result((0,) * 8 + (os.ST_RDONLY, 255)))
    result = invoke(*eval_args(model, words, "--json", tmp_path / "results.json"))
    assert_one_clear_line(result, f"cannot write in {tmp_path} (read-only file system)")
    assert "1-NED" not in result.output
    assert_one_clear_line(invoke(*train_args(words, tmp_path / "run")), "read-only file system")


def test_devices_and_option_values_are_one_line(words, model, image, tmp_path):
    absent = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    expected = "CUDA device(s)" if torch.cuda.is_available() else "CUDA is not available on this machine"
    assert_one_clear_line(invoke("predict", "--checkpoint", model, "--device", absent, image), f"device '{absent}'", expected)
    assert_one_clear_line(invoke("eval", "--checkpoint", model, "--data", words, "--device", absent), expected)
    assert_one_clear_line(invoke(*train_args(words, tmp_path / "run"), "--device", absent), expected)
    assert_one_clear_line(invoke(*train_args(words, tmp_path / "run"), "--scene-device", absent), expected)
    assert_one_clear_line(invoke("predict", "--checkpoint", model, "--device", "gpu", image), "device 'gpu': unknown")
    for value in ("nan", "inf", "-1", "0"):
        result = invoke(*train_args(words, tmp_path / "run", "--lr", value))
        assert_one_clear_line(result, "--lr must be a finite number above 0")
    assert_one_clear_line(invoke(*train_args(words, tmp_path / "run", "--channels", "a,b")), "--channels 'a,b'")
    assert_one_clear_line(invoke(*train_args(words, tmp_path / "run", "--forget-bias", "nan")), "--forget-bias must be")
    recipe = tmp_path / "recipe.toml"  # a recipe is a file: its values are untrusted too
    recipe.write_text("width = 1000000000000\n")
    assert_one_clear_line(invoke(*train_args(words, tmp_path / "run", "--config", recipe)), "--width must be a whole number")
    recipe.write_text('lr = "fast"\n')
    assert_one_clear_line(invoke(*train_args(words, tmp_path / "run", "--config", recipe)), "--lr must be", "'fast'")
    with pytest.raises(ConfigError, match="--warmup-steps"):
        train(tiny_config(words, tmp_path / "run", warmup_steps=-1))
    assert not (tmp_path / "run").exists()  # none of these left a run folder behind


# --- 5. special files never hang -----------------------------------------------------------------------------

@pytest.fixture
def odd_folder(tmp_path):
    """A folder with a good image and every kind of special file under image names."""
    folder = tmp_path / "odd"
    folder.mkdir()
    render_word("gate").save(folder / "good.png")
    os.mkfifo(folder / "fifo.png")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "socket.png"))
    os.symlink("loop_b.png", folder / "loop_a.png")
    os.symlink("loop_a.png", folder / "loop_b.png")
    os.symlink("gone.png", folder / "dangling.png")
    os.symlink("/dev/zero", folder / "zero.png")
    expected = {
        "fifo.png": "is a FIFO (named pipe), not a regular file",
        "socket.png": "is a socket, not a regular file",
        "loop_a.png": "symbolic link loop",
        "loop_b.png": "symbolic link loop",
        "dangling.png": "dangling symbolic link (its target gone.png does not exist)",
        "zero.png": "is a character device, not a regular file",
    }
    yield folder, expected
    server.close()


def test_predict_reports_every_special_file_and_never_hangs(odd_folder, model):
    folder, expected = odd_folder
    result = invoke("predict", "--checkpoint", model, "--device", "cpu", folder)
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = error_lines(result.output)
    assert len(errors) == len(expected), errors
    for name, reason in expected.items():
        assert sum(f"{folder / name}: {reason}" in line for line in errors) == 1, (name, errors)
    assert sum(line.startswith(f"{folder / 'good.png'}\t") for line in result.output.splitlines()) == 1
    for name, reason in expected.items():  # each given by name
        assert_one_clear_line(invoke("predict", "--checkpoint", model, "--device", "cpu", folder / name), reason)


def test_special_files_as_inputs_and_outputs_of_every_command(words, model, image, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    fifo_reason = "is a FIFO (named pipe)"
    assert_one_clear_line(invoke("predict", "--checkpoint", fifo, image), str(fifo), fifo_reason)
    assert_one_clear_line(invoke("predict", "--checkpoint", "/dev/zero", image), "is a character device")
    assert_one_clear_line(invoke(*eval_args(fifo, words)), fifo_reason)
    assert_one_clear_line(invoke("create-lmdb", fifo, tmp_path / "out"), str(fifo), fifo_reason)
    assert_one_clear_line(invoke("train", "--config", fifo), str(fifo), fifo_reason)
    assert_one_clear_line(invoke(*train_args(words, tmp_path / "run", "--charset", f"file:{fifo}")), fifo_reason)
    assert_one_clear_line(invoke(*eval_args(model, words, "--json", fifo)), str(fifo), fifo_reason)
    assert_one_clear_line(invoke("export", model, fifo, "--overwrite"), str(fifo), fifo_reason)
    # The run's own state as a FIFO: refused, not read.
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "resume.pt")
    assert_one_clear_line(invoke(*train_args(words, run)), "resume.pt", fifo_reason)


# --- 6. create-lmdb ---------------------------------------------------------------------------------------------

def test_create_lmdb_with_the_wrong_root_fails_and_leaves_nothing(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for word in ("one", "two"):
        render_word(word).save(images / f"{word}.png")
    gt = tmp_path / "gt.txt"
    gt.write_text("one.png\tone\ntwo.png\ttwo\n")  # relative to images/, not to the gt file's folder
    (tmp_path / "out.partial").mkdir()  # a folder of the user's with the name older versions staged in
    result = invoke("create-lmdb", gt, tmp_path / "out")
    assert_one_clear_line(result, str(gt), "no sample written, 2 of 2 lines skipped", "no such file", "--root")
    assert sorted(os.listdir(tmp_path)) == ["gt.txt", "images", "out.partial"]  # no LMDB, no staging folder
    result = invoke("create-lmdb", gt, tmp_path / "out", "--root", images)
    assert result.exit_code == 0 and "wrote 2 samples" in result.output, result.output


def test_create_lmdb_refuses_and_counts_bad_labels_paths_and_files(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    render_word("good").save(root / "good.png")
    render_word("out").save(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "link.png")
    os.mkfifo(root / "fifo.png")
    lines = [
        "good.png\tgood",
        "good.png\tta\tb",
        "good.png\tbell\x07",
        "good.png\tline\u2028sep",
        "../outside.png\tdots",
        f"{tmp_path / 'outside.png'}\tabsolute",
        "link.png\tlink",
        "fifo.png\tpipe",
    ]
    gt = tmp_path / "gt.txt"
    gt.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\ncaf\xe9.png\tlatin\n")  # BOM first, a Latin-1 line last
    result = invoke("create-lmdb", gt, tmp_path / "out", "--root", root)
    assert result.exit_code == 1, result.output  # lines were skipped
    assert "wrote 1 samples" in result.output and "skipped 8 bad lines" in result.output
    for fragment in (
        ":2: label holds a tab", ":3: label holds a control character (U+0007)", ":4: label holds a line separator (U+2028)",
        ":5: ", ":6: ", ":7: ", "resolves outside the root folder", "--allow-outside-root", ":8: ", "is a FIFO",
        ":9: line is not valid UTF-8 (byte 0xe9 at column 4",
    ):
        assert fragment in result.output, fragment
    dataset = LmdbDataset(tmp_path / "out")
    assert [dataset.read_label(i) for i in range(len(dataset))] == ["good"]  # the BOM did not stick to the first path
    result = invoke("create-lmdb", gt, tmp_path / "out2", "--root", root, "--allow-outside-root")
    dataset = LmdbDataset(tmp_path / "out2")
    assert [dataset.read_label(i) for i in range(len(dataset))] == ["good", "dots", "absolute", "link"]
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("good.png\tgood\n".encode("utf-16"))
    result = invoke("create-lmdb", utf16, tmp_path / "out3", "--root", root)
    assert result.exit_code == 0 and "wrote 1 samples" in result.output, result.output


# --- 7. resuming with other hyper-parameters ---------------------------------------------------------------------

def test_resume_refuses_changed_hyper_parameters_unless_accepted(words, tmp_path):
    run = tmp_path / "run"
    base = dict(val_data=[], max_steps=2, save_interval=2, log_interval=1)
    train(tiny_config(words, run, **base))
    with pytest.raises(CheckpointError) as info:
        train(tiny_config(words, run, **{**base, "max_steps": 4, "lr": 1e-3, "batch_size": 6, "val_data": [str(words)]}))
    message = str(info.value)
    for fragment in ("resume.pt: the run in this folder was trained with other hyper-parameters", "batch_size: 12 -> 6",
                     "lr: 0.003 -> 0.001", "val_data: [] -> [", "--accept-changes"):
        assert fragment in message, message
    assert "\n" not in message and load_state(run / "resume.pt")["step"] == 2
    # What tools/gpu_lease.sh does needs no option: more steps, another scene device, an init checkpoint (ignored).
    recorder = Recorder()
    train(tiny_config(words, run, **{**base, "max_steps": 3, "scene_device": "cpu", "init_from": str(tmp_path / "absent")}), recorder)
    assert recorder.starts[0].resumed_from == 2
    # Accepted: the run goes on with the new values and says which changed.
    recorder = Recorder()
    result = train(tiny_config(words, run, **{**base, "max_steps": 5, "lr": 1e-3, "accept_changes": True}), recorder)
    assert result.steps == 5
    assert any("changed hyper-parameters (accepted by --accept-changes): lr: 0.003 -> 0.001" in e for e in recorder.events)
    state = load_state(run / "resume.pt")
    # Three groups (the refined model's short-connection projections have their own, refine_lr_scale 1 here).
    assert [g["initial_lr"] for g in state["optimizer"]["param_groups"]] == [1e-3, 1e-3, 1e-3]
    assert state["scheduler"]["base_lrs"] == [1e-3, 1e-3, 1e-3] and state["config"]["lr"] == 1e-3
    # The CLI: the refusal names the option, which then lets it go on.
    args = ["train", "--train-data", words, "--output", run, "--max-steps", 6, "--batch-size", 12, "--lr", 0.01,
            "--workers", 0, "--no-augment", "--device", "cpu", "--refine", "mul", *ARCH]
    assert_one_clear_line(invoke(*args), "lr: 0.001 -> 0.01", "--accept-changes")
    result = invoke(*args, "--accept-changes")
    assert result.exit_code == 0 and "resuming with changed hyper-parameters" in result.output, result.output
    # A resume state whose weights are not finite is refused, not trained on.
    state = load_state(run / "resume.pt")
    state["model"]["head.bias"][0] = float("nan")
    torch.save(state, run / "resume.pt")
    with pytest.raises(CheckpointError, match="non-finite values"):
        train(tiny_config(words, run, **{**base, "max_steps": 8, "lr": 0.01, "accept_changes": True}))
