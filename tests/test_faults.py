"""Faults and hostile files (issue #6): kills, Ctrl-C, non-finite steps, pickles and mismatched checkpoints.

A training run killed with SIGKILL or stopped with Ctrl-C resumes, with the same command, to the same
weights an uninterrupted run reaches; no half-written file survives; a non-finite step is skipped and
counted; loading a checkpoint never runs code from it. Cases already covered elsewhere:
tests/test_train.py (resume extends a finished run, a run of other options is refused, all-unreadable
data stops the run). docs/robustness.md has the full table.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import textrec.train
from cliutil import assert_one_clear_line, invoke
from imagegen import png_bytes, render_word, write_lmdb
from textrec.charset import Charset
from textrec.checkpoint import (
    Checkpoint,
    atomic_write,
    load_checkpoint,
    load_state,
    load_weights,
    save_checkpoint,
)
from textrec.data.images import Preprocess
from textrec.errors import CheckpointError, TrainingError
from textrec.model import CRNN, CRNNConfig
from textrec.train import TrainConfig, train

from test_train import TINY, Recorder, tiny_config

REPO = Path(__file__).resolve().parents[1]
WAIT = 180  # seconds: generous bound on every wait for a subprocess


@pytest.fixture(scope="module")
def words(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    return write_lmdb(root / "words", [(png_bytes(render_word(w)), w) for w in ["cat", "door", "42", "gate", "lstm"]])


def tiny_model_config(**changes) -> CRNNConfig:
    values = dict(num_classes=37, rnn="lstm", refine="mul", **TINY)
    values.update(changes)
    return CRNNConfig(**values)


def tiny_checkpoint(path: Path, config: CRNNConfig | None = None, charset: str = "36") -> Path:
    config = config or tiny_model_config()
    torch.manual_seed(0)
    save_checkpoint(path, Checkpoint(config, Charset.from_spec(charset), Preprocess(), CRNN(config).state_dict()))
    return path


# --- hostile files ------------------------------------------------------------------------------------


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_payload_is_live(tmp_path):
    """The crafted pickle really runs code when unpickled the unsafe way, so the refusals below mean something."""
    pickle.loads(pickle.dumps(RunsCode(tmp_path / "ran")))
    assert (tmp_path / "ran").exists()


@pytest.fixture
def hostile(tmp_path) -> tuple[Path, list[Path]]:
    """Pickle files that would create `marker` when loaded: torch.save (zip) and bare pickle, under model names."""
    marker = tmp_path / "pwned"
    payload = {"model": RunsCode(marker), "state_dict": {"w": torch.zeros(2)}}
    files = [tmp_path / "zip.safetensors", tmp_path / "model.pt", tmp_path / "bare.safetensors"]
    torch.save(payload, files[0])
    torch.save(payload, files[1])
    files[2].write_bytes(pickle.dumps(payload))
    return marker, files


def test_pickle_checkpoints_are_refused_without_running_code(hostile, tmp_path):
    marker, files = hostile
    image = tmp_path / "word.png"
    render_word("word").save(image)
    for path in files:
        with pytest.raises(CheckpointError, match="looks like a pickle"):
            load_checkpoint(path)
        result = invoke("predict", "--checkpoint", path, "--device", "cpu", image)
        assert_one_clear_line(result, str(path), "never unpickles")
        result = invoke("eval", "--checkpoint", path, "--device", "cpu", "--data", tmp_path)
        assert_one_clear_line(result, str(path), "never unpickles")
    assert not marker.exists()


def test_pickled_resume_state_is_refused_without_running_code(hostile, words, tmp_path):
    marker, files = hostile
    for source in (files[0], files[2]):
        run = tmp_path / f"run_{source.stem}"
        run.mkdir()
        (run / "resume.pt").write_bytes(source.read_bytes())
        with pytest.raises(CheckpointError, match="refused, not plain training state"):
            load_state(run / "resume.pt")
        result = invoke("train", "--train-data", words, "--output", run, "--max-steps", 2, "--device", "cpu")
        line = assert_one_clear_line(result, str(run / "resume.pt"), "refused", "never loads a file in a way that could run code")
        assert "weights_only` set to `False`" not in line  # no advice to load it unsafely
    assert "posix.system" in line or "Unsupported" in line
    assert not marker.exists()


def test_weights_of_another_architecture_or_charset_are_refused():
    model = CRNN(tiny_model_config())
    cases = {
        "hidden size": (tiny_model_config(hidden_size=32), "different shape: head.weight"),
        "rnn": (tiny_model_config(rnn="gru"), "different shape: sequence."),
        "refine": (tiny_model_config(refine="none"), "missing: sequence.weight_refine_l0"),
        "charset": (tiny_model_config(num_classes=63), "different shape: head.bias, head.weight"),
    }
    for name, (config, words) in cases.items():
        with pytest.raises(CheckpointError, match="other.safetensors: weights do not fit this architecture") as info:
            load_weights(model, CRNN(config).state_dict(), "other.safetensors")
        assert words in str(info.value), (name, str(info.value))


def test_checkpoint_whose_parts_disagree_is_refused(tmp_path):
    """Metadata of one model with weights of another; a charset that does not fit the output layer."""
    crafted = tmp_path / "crafted.safetensors"
    torch.manual_seed(0)
    weights = CRNN(tiny_model_config(hidden_size=32)).state_dict()
    save_checkpoint(crafted, Checkpoint(tiny_model_config(), Charset.from_spec("36"), Preprocess(), weights))
    image = tmp_path / "w.png"
    render_word("w").save(image)
    result = invoke("predict", "--checkpoint", crafted, "--device", "cpu", image)
    assert_one_clear_line(result, str(crafted), "weights do not fit this architecture", "different shape")
    wrong_charset = tiny_checkpoint(tmp_path / "charset.safetensors", charset="62")
    with pytest.raises(CheckpointError, match="model has 37 output classes but the charset needs 63"):
        load_checkpoint(wrong_charset)


def test_resume_refuses_another_architecture_or_charset(words, tmp_path):
    """(Another --refine is in test_train.py.)"""
    train(tiny_config(words, tmp_path / "run", val_data=[], max_steps=2, save_interval=2))
    with pytest.raises(CheckpointError, match="hidden_size: 48 -> 32"):
        train(tiny_config(words, tmp_path / "run", val_data=[], max_steps=4, hidden_size=32))
    with pytest.raises(CheckpointError, match="charset: '36' -> '62'"):
        train(tiny_config(words, tmp_path / "run", val_data=[], max_steps=4, charset="62"))
    with pytest.raises(CheckpointError, match="rnn: 'lstm' -> 'gru'"):
        train(tiny_config(words, tmp_path / "run", val_data=[], max_steps=4, rnn="gru"))


def test_truncated_or_foreign_checkpoints(tmp_path):
    raw = tiny_checkpoint(tmp_path / "good.safetensors").read_bytes()
    cases = {
        "half.safetensors": (raw[: len(raw) // 2], "corrupt weights"),
        "header.safetensors": (raw[:100], "not a safetensors checkpoint"),
        "tiny.safetensors": (raw[:5], "too short to be a checkpoint"),
        "empty.safetensors": (b"", "too short to be a checkpoint"),
        "text.safetensors": (b"hello, this is not a model at all", "not a safetensors checkpoint"),
    }
    from safetensors.torch import save as plain_safetensors

    cases["foreign.safetensors"] = (plain_safetensors({"w": torch.zeros(3)}), "without textrec metadata")
    image = tmp_path / "w.png"
    render_word("w").save(image)
    for name, (data, words) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=words):
            load_checkpoint(path)
        assert_one_clear_line(invoke("predict", "--checkpoint", path, "--device", "cpu", image), str(path), words)
    assert_one_clear_line(
        invoke("predict", "--checkpoint", tmp_path / "absent.safetensors", image), "checkpoint file not found"
    )
    assert_one_clear_line(invoke("predict", "--checkpoint", tmp_path, image), "is a folder")


def test_damaged_resume_state(words, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(words, run, val_data=[], max_steps=2, save_interval=2))
    state = (run / "resume.pt").read_bytes()
    (run / "resume.pt").write_bytes(state[: len(state) // 2])
    with pytest.raises(CheckpointError, match="resume.pt: corrupt training state"):
        train(tiny_config(words, run, val_data=[], max_steps=4))
    torch.save({"step": 3}, run / "resume.pt")  # loads safely, but is not a textrec state
    with pytest.raises(CheckpointError, match=r"resume.pt: incomplete or invalid training state \(KeyError: 'config'\)"):
        train(tiny_config(words, run, val_data=[], max_steps=4))
    result = invoke("train", "--train-data", words, "--output", run, "--max-steps", 4, "--device", "cpu")
    assert_one_clear_line(result, "incomplete or invalid training state")


# --- atomic writes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file(tmp_path, failure):
    target = tmp_path / "last.safetensors"
    target.write_bytes(b"old and complete")

    def write(handle):
        handle.write(b"new but ha")
        raise failure

    with pytest.raises(type(failure)):
        atomic_write(target, write)
    assert target.read_bytes() == b"old and complete"
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


# --- non-finite steps ---------------------------------------------------------------------------------------


class _NanGradient(torch.autograd.Function):
    """Identity forward (so the loss stays finite), NaN backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@pytest.fixture
def poisoned(monkeypatch):
    """Make chosen training forward passes (1-based) give a NaN loss or a NaN gradient: {call: "loss"|"grad"}."""
    plan: dict[int, str] = {}
    calls = [0]

    class PoisonedCRNN(CRNN):
        def forward(self, images):
            out = super().forward(images)
            if not self.training:
                return out
            calls[0] += 1
            kind = plan.get(calls[0], plan.get("rest") if calls[0] >= plan.get("from", 10**9) else None)
            if kind == "loss":
                return out * float("nan")
            if kind == "grad":
                return _NanGradient.apply(out)
            return out

    monkeypatch.setattr(textrec.train, "CRNN", PoisonedCRNN)
    return plan


def finite_weights(path: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_checkpoint(path).state_dict.values())


def test_non_finite_steps_are_skipped_and_counted(words, tmp_path, poisoned):
    poisoned.update({3: "loss", 6: "grad"})  # steps 2 and 5 (0-based)
    recorder = Recorder()
    result = train(tiny_config(words, tmp_path / "run", val_data=[], max_steps=8, save_interval=8), recorder)
    assert result.steps == 8 and result.nonfinite_steps == 2 and not result.interrupted
    skipped = [e for e in recorder.events if "non-finite" in e]
    assert skipped == ["step 2: non-finite loss or gradient, step skipped", "step 5: non-finite loss or gradient, step skipped"]
    # A NaN gradient that reached AdamW would have made every weight NaN.
    assert finite_weights(tmp_path / "run" / "last.safetensors")
    assert load_state(tmp_path / "run" / "resume.pt")["nonfinite_steps"] == 2


def test_repeated_non_finite_steps_stop_with_a_usable_checkpoint(words, tmp_path, poisoned):
    poisoned.update({"from": 3, "rest": "loss"})  # every step from step 2 on
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"3 steps in a row had a non-finite loss or gradient \(last at step 4\); stopped") as info:
        train(tiny_config(words, run, val_data=[], max_steps=20, save_interval=10, max_bad_steps=3))
    assert str(run) in str(info.value) and "\n" not in str(info.value)
    assert finite_weights(run / "last.safetensors")
    assert load_checkpoint(run / "last.safetensors").info["step"] == 4
    # The state is usable: once the cause is gone, the same command resumes and finishes.
    poisoned.clear()
    recorder = Recorder()
    result = train(tiny_config(words, run, val_data=[], max_steps=6, save_interval=10, max_bad_steps=3), recorder)
    assert recorder.starts[0].resumed_from == 4 and result.steps == 6 and result.nonfinite_steps == 3


def test_cli_reports_non_finite_steps(words, tmp_path, poisoned):
    args = ["--train-data", words, "--batch-size", 4, "--workers", 0, "--no-augment", "--device", "cpu",
            "--channels", ",".join(map(str, TINY["channels"])), "--hidden-size", TINY["hidden_size"]]
    poisoned.update({2: "grad"})
    result = invoke("train", "--output", tmp_path / "a", "--max-steps", 6, *args)
    assert result.exit_code == 0, result.output
    assert "step 1: non-finite loss or gradient, step skipped" in result.output
    assert "6 steps; 1 steps skipped for non-finite loss/gradient" in result.output
    poisoned.clear()
    poisoned.update({"from": 1, "rest": "loss"})
    result = invoke("train", "--output", tmp_path / "b", "--max-steps", 20, *args)
    assert_one_clear_line(result, "10 steps in a row had a non-finite loss or gradient (last at step 9)", "Lower --lr")
    assert finite_weights(tmp_path / "b" / "last.safetensors")


# --- interruptions ------------------------------------------------------------------------------------------


def test_stale_log_lines_of_a_run_killed_before_its_first_save_are_dropped(words, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 20, "loss": 3.0}\n{"step": 40, "lo')  # no resume.pt: never saved
    (run / ".resume.pt.k1ll3d.tmp").write_bytes(b"half a file")
    train(tiny_config(words, run, val_data=[], max_steps=3, log_interval=1, save_interval=3))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert not list(run.glob(".*.tmp"))


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt  # what `textrec train` does on SIGTERM


@pytest.mark.parametrize("ahead", [0, 2], ids=["in-loop", "finish-ahead-2"])
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_in_the_middle_of_an_update_resumes_exactly(words, tmp_path, monkeypatch, number, ahead):
    """Ctrl-C (or SIGTERM) after the optimizer step but before the step count: the saved state must be consistent.

    Dropout is on, so the RNG stream must also be restored exactly. With batches finished ahead in a thread
    (--finish-ahead), the interrupted and resumed run must still end where the straight run (in the loop) ends.
    """
    handler = signal.default_int_handler if number == signal.SIGINT else _raise_keyboard_interrupt
    previous = signal.signal(number, handler)
    try:
        config = dict(val_data=[], max_steps=10, save_interval=5, log_interval=1, dropout=0.2, batch_size=4)
        train(tiny_config(words, tmp_path / "straight", **config))

        original = textrec.train._Run._loss
        fired = []

        def loss_then_ctrl_c(self, batch, images):
            loss = original(self, batch, images)
            if self.step == 6 and not fired:  # the 7th update is applied, its step not yet counted
                fired.append(True)
                signal.getsignal(number)(number, None)  # what the interpreter does when the signal arrives
            return loss

        monkeypatch.setattr(textrec.train._Run, "_loss", loss_then_ctrl_c)
        recorder = Recorder()
        result = train(tiny_config(words, tmp_path / "stopped", **config, finish_ahead=ahead), recorder)
        assert fired and result.interrupted and result.steps == 7
        assert recorder.events[-1] == "interrupted: state saved at step 7; run the same command to resume"
        monkeypatch.setattr(textrec.train._Run, "_loss", original)
        result = train(tiny_config(words, tmp_path / "stopped", **config, finish_ahead=ahead))
        assert result.steps == 10 and not result.interrupted
    finally:
        signal.signal(number, previous)
    assert_same_weights(tmp_path / "stopped" / "last.safetensors", tmp_path / "straight" / "last.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), (name, (first[name] - second[name]).abs().max())


# A real `textrec train` process, killed or interrupted; then the same command again.

TRAIN_STEPS = 40


def train_command(data: Path, output: Path) -> list[str]:
    args = ["train", "--train-data", data, "--output", output, "--max-steps", TRAIN_STEPS, "--batch-size", 4,
            "--save-interval", 5, "--workers", 0, "--no-augment", "--device", "cpu", "--seed", 7, "--lr", 3e-3,
            "--channels", ",".join(map(str, TINY["channels"])), "--hidden-size", TINY["hidden_size"]]
    return [sys.executable, "-m", "cli.main", *map(str, args)]


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # so Python installs its KeyboardInterrupt handler, even under nohup/&


def start(command: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250", "PYTHONPATH": str(REPO)}
    with open(log, "w") as handle:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                preexec_fn=_default_sigint)


def run_to_end(command: list[str], log: Path) -> str:
    process = start(command, log)
    try:
        code = process.wait(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert code == 0, output
    return output


def wait_for_first_save(process: subprocess.Popen, run: Path, log: Path) -> None:
    deadline = time.monotonic() + WAIT
    while not (run / "resume.pt").exists():
        if process.poll() is not None:
            pytest.fail(f"training exited ({process.returncode}) before its first save:\n{log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("no save within the time limit")
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be interrupted; raise TRAIN_STEPS"


_references: dict[str, Path] = {}


def reference_weights(run: Path, tmp_path_factory) -> Path:
    """last.safetensors of an uninterrupted run with the same config.json as `run` (trained in this process)."""
    config = json.loads((run / "config.json").read_text())
    config.pop("output")
    key = json.dumps(config, sort_keys=True)
    if key not in _references:
        output = tmp_path_factory.mktemp("reference") / "run"
        result = train(TrainConfig.from_dict({**config, "output": str(output)}))
        assert result.steps == TRAIN_STEPS
        _references[key] = output / "last.safetensors"
    return _references[key]


def assert_every_file_loads(run: Path) -> list[Path]:
    """Every finished file in the run folder is whole; returns the temporary files a kill may leave."""
    temps = []
    for path in run.iterdir():
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            temps.append(path)
        elif path.suffix == ".safetensors":
            load_checkpoint(path)
        elif path.name == "resume.pt":
            load_state(path)
        elif path.name == "config.json":
            json.loads(path.read_text())
        elif path.name == "metrics.jsonl":
            lines = path.read_text().splitlines()
            for line in lines[:-1]:
                json.loads(line)  # only the last line may be cut by the kill (it is dropped on resume)
        elif path.name == "train.lock":
            pass  # a killed run's lock file: the kernel released its lock with the process
        else:
            pytest.fail(f"unexpected file {path.name}")
    return temps


def test_sigkill_at_any_moment_then_the_same_command_resumes_exactly(words, tmp_path, tmp_path_factory):
    run = tmp_path / "run"
    command = train_command(words, run)
    process = start(command, tmp_path / "first.log")
    try:
        wait_for_first_save(process, run, tmp_path / "first.log")
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=WAIT) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    assert_every_file_loads(run)
    # Had the kill hit a save, its temporary file would be here; make sure of one, half written.
    (run / ".last.safetensors.x7kq2b.tmp").write_bytes((run / "resume.pt").read_bytes()[:1000])

    output = run_to_end(command, tmp_path / "second.log")
    resumed = re.search(r"resuming from step (\d+)", output)
    assert resumed, output
    step = int(resumed.group(1))
    assert step % 5 == 0 and 5 <= step < TRAIN_STEPS
    assert f"{TRAIN_STEPS} steps." in output
    assert "(last.safetensors)" in output  # no validation set, so no best.safetensors is promised
    assert assert_every_file_loads(run) == []
    assert not (run / "train.lock").exists()  # a run that ends removes its lock file
    assert load_checkpoint(run / "last.safetensors").info["step"] == TRAIN_STEPS
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no step logged twice
    assert_same_weights(run / "last.safetensors", reference_weights(run, tmp_path_factory))


def test_ctrl_c_saves_exits_130_and_the_same_command_resumes_exactly(words, tmp_path, tmp_path_factory):
    run = tmp_path / "run"
    command = train_command(words, run)
    log = tmp_path / "first.log"
    process = start(command, log)
    try:
        wait_for_first_save(process, run, log)
        os.kill(process.pid, signal.SIGINT)
        code = process.wait(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert code == 130, output
    assert "Traceback" not in output
    saved = re.search(r"interrupted: state saved at step (\d+); run the same command to resume", output)
    assert saved, output
    step = int(saved.group(1))
    assert 5 <= step < TRAIN_STEPS
    assert assert_every_file_loads(run) == []
    assert load_state(run / "resume.pt")["step"] == step
    assert load_checkpoint(run / "last.safetensors").info["step"] == step

    output = run_to_end(command, tmp_path / "second.log")
    assert f"resuming from step {step}" in output, output
    assert_same_weights(run / "last.safetensors", reference_weights(run, tmp_path_factory))
