"""Ten-second check of the GPU code paths before a lease trains, so that a failure costs a fallback, not the lease.

    python tools/device_check.py RECIPE.toml CHECKPOINT

Prints one `KEY=VALUE` line per fallback to take (for the shell to export), and why, on stderr:
  SCENE_DEVICE=cpu      the batched image stage failed on the GPU: finish batches on the CPU instead
  FINISH_AHEAD=0        batches finished ahead in a thread on a side CUDA stream (textrec.synth.ahead) differ
                        from those the training loop finishes: finish them in the loop
  TEXTREC_TORCH_RNN=0   a training step with torch's RNN kernel failed: use textrec's own recurrent path
  TRAIN_ARGS=           the recipe or $TRAIN_ARGS asks for other gates than the checkpoint's (--refine ...) and a
                        training step of the checkpoint turned into that model failed: drop TRAIN_ARGS
  TEXTREC_TRITON_RNN=0  training steps with the recurrent layer's Triton step kernels (textrec.nn.triton_steps)
                        failed or did not give the torch ops' loss and gradients (1 % relative), checked before
                        the graphs; or, timed after them as training will run (with the graphs if they work, at
                        the training's batch size), were not faster: run each step's element-wise work as torch ops (the graphs are then
                        checked again that way). On the model to train, or the recipe's as for the graphs below
  TEXTREC_CUDA_GRAPHS=0 training steps with CUDA graphs of textrec's own recurrent kernel
                        (textrec.nn.GraphedTraining) failed or did not give the plain steps' loss and gradients
                        (1 % relative), with batches finished in another thread meanwhile as --finish-ahead
                        does: launch its ops one by one instead. Checked on the model to train, or on the
                        recipe's model when the one to train runs torch's kernel (harmless there)
  WIDTH_BUCKETS=0       the recipe or $TRAIN_ARGS trains width-bucketed batches (--width-buckets, batches of
                        several widths) and CUDA graphs captured for two input widths in turn failed or disagreed
                        with plain steps: train full-width batches, whose one shape the graphs passed above
Nothing is printed on stdout when all work (or when there is no GPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import sys
import threading
import time
import tomllib
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textrec.charset import Charset  # noqa: E402
from textrec.checkpoint import load_checkpoint  # noqa: E402
from textrec.model import CRNN, CRNNConfig  # noqa: E402
from textrec.nn import GraphedTraining, tensor_core_matmuls  # noqa: E402
from textrec.nn.gates import parse_gate_names  # noqa: E402
from textrec.synth.ahead import FinishAhead  # noqa: E402
from textrec.synth.pipeline import Finisher, SynthSource, collate_raw, raw_real  # noqa: E402
from textrec.train import adamw  # noqa: E402
from textrec.transfer import REFINEMENT_KEYS  # noqa: E402


def report(problem: str, error: BaseException) -> None:
    print(f"device check: {problem}: {type(error).__name__}: {error}", file=sys.stderr)
    traceback.print_exc(limit=3, file=sys.stderr)


def main() -> None:
    recipe = tomllib.loads(Path(sys.argv[1]).read_text())
    checkpoint = load_checkpoint(sys.argv[2])
    if not torch.cuda.is_available():
        return
    device = torch.device("cuda")
    height, width = recipe.get("height", 32), recipe.get("width", 100)
    charset = Charset.from_spec(recipe.get("charset", "36"))
    finisher = Finisher(height, width, 0, device)
    source = SynthSource(0, charset, max_frames=width // 4 + 1)
    image = crop_for_check(source, finisher)
    raws = [source.raw(i) for i in range(48)] + [raw_real(image, "word", *finisher.canvas_size)] * 16
    batch, _ = collate_raw(raws)
    try:
        for step in range(3):
            images = finisher.model_input(batch, step)
        torch.cuda.synchronize()
        assert torch.isfinite(images).all() and images.shape == (64, 1, height, width)
    except Exception as error:  # noqa: BLE001  (any failure means: fall back)
        report("the image stage failed on the GPU", error)
        print("SCENE_DEVICE=cpu")
        finisher = Finisher(height, width, 0, "cpu")  # as training will finish its batches from here on
        images = finisher.model_input(batch, 0).to(device)
    else:
        try:
            ahead_agrees(finisher, batch)
        except Exception as error:  # noqa: BLE001
            report("batches finished ahead on a side CUDA stream differ from those finished in the loop", error)
            print("FINISH_AHEAD=0")
    model = checkpoint.build_model().to(device).train()
    if model.sequence.has_torch_kernel:
        try:
            training_step(model, images)
        except Exception as error:  # noqa: BLE001
            report("a training step with torch's RNN kernel failed", error)
            print("TEXTREC_TORCH_RNN=0")
    trained = trained_config(checkpoint.model_config, recipe, os.environ.get("TRAIN_ARGS", ""))
    if trained != checkpoint.model_config:
        try:
            training_step(CRNN(trained).to(device).train(), images)
        except Exception as error:  # noqa: BLE001
            report(f"a training step of the model to train ({trained.refine} gates, TRAIN_ARGS={os.environ.get('TRAIN_ARGS', '')!r}) failed", error)
            print("TRAIN_ARGS=")
            trained = trained_config(checkpoint.model_config, recipe, "")
    # The graphs apply to textrec's own kernel. A run that trains with torch's (a vanilla twin) still checks
    # them on the recipe's own model, so that every lease says whether they work (the line goes to the log).
    checked = trained if not CRNN(trained).sequence.has_torch_kernel else trained_config(checkpoint.model_config, recipe, "")
    if not CRNN(checked).sequence.has_torch_kernel:
        # the speed test at the batch size training will use (the check's 64 images, repeated)
        size = training_batch(recipe, os.environ.get("TRAIN_ARGS", ""))
        full = images.repeat(-(-size // len(images)), 1, 1, 1)[:size]
        # with batches finished in another thread meanwhile, as training does them (--finish-ahead)
        buckets = width_buckets(recipe, os.environ.get("TRAIN_ARGS", "")) > 0
        recurrent_paths(checked, images, lambda k: finisher.model_input(batch, 100 + k).to(device, non_blocking=True), full, buckets)


def recurrent_paths(config: CRNNConfig, images, finish_meanwhile, full_batch=None, buckets: bool = False) -> None:
    """Textrec's own recurrent kernel on the GPU: its Triton step kernels, then CUDA graphs, then whether the
    kernels make steps faster as training will run them (on `full_batch`, a batch of the training's size, where
    given); each failure prints its fallback."""
    kernels = True
    try:
        kernels_agree(config, images)
    except Exception as error:  # noqa: BLE001
        report("the recurrent layer's Triton step kernels failed or disagreed with the torch ops", error)
        kernels = without_kernels()
    graphs = graphs_work(config, images, finish_meanwhile, buckets)
    if kernels:
        try:  # timed as training will run: with the graphs if they work, when launches cost little either way
            kernels_faster(config, images if full_batch is None else full_batch, graphs)
        except Exception as error:  # noqa: BLE001
            report("the Triton step kernels made training steps no faster", error)
            without_kernels()
            if graphs:  # they were checked with the kernels: again without
                graphs_work(config, images, finish_meanwhile, buckets)


def without_kernels() -> bool:
    """The fallback to the torch ops, for the shell and for the rest of this check."""
    print("TEXTREC_TRITON_RNN=0")
    os.environ["TEXTREC_TRITON_RNN"] = "0"
    return False


def graphs_work(config: CRNNConfig, images, finish_meanwhile, buckets: bool = False) -> bool:
    """`graphs_agree`, with its fallback printed when it raises; with `buckets`, then at two widths in turn."""
    try:
        graphs_agree(config, images, finish_meanwhile=finish_meanwhile)
    except Exception as error:  # noqa: BLE001
        report("training steps with CUDA graphs of the recurrent layer failed or disagreed", error)
        print("TEXTREC_CUDA_GRAPHS=0")
        return False
    print(f"device check: CUDA graphs of the recurrent layer ({config.refine} gates) agree with plain steps", file=sys.stderr)
    if buckets:
        try:
            graphs_agree(config, images, steps=4, finish_meanwhile=finish_meanwhile, widths=(images.shape[-1], 96))
        except Exception as error:  # noqa: BLE001
            report("CUDA graphs of the recurrent layer at two widths (width buckets) failed or disagreed", error)
            print("WIDTH_BUCKETS=0")
        else:
            print("device check: CUDA graphs of the recurrent layer at two widths agree with plain steps", file=sys.stderr)
    return True


def ahead_agrees(finisher: Finisher, raw, steps: int = 4) -> None:
    """Raises unless `FinishAhead` (a thread, a side stream) gives the images the training loop would make."""
    direct = [finisher.model_input(raw, 7 + k) for k in range(steps)]
    batches = [SimpleNamespace(raw=raw) for _ in range(steps)]
    for k, (_, images) in enumerate(FinishAhead(batches, finisher.model_input, 7, finisher.device, ahead=2)):
        used = images * 1.0  # read on the main stream, as the step reads it
        if not torch.allclose(used, direct[k], atol=1e-4):
            raise AssertionError(f"step {7 + k}: largest difference {float((used - direct[k]).abs().max()):.3g}")
    torch.cuda.synchronize()


def backward(model, images) -> torch.Tensor:
    """Forward (under autocast on CUDA, as training runs it), a loss that reaches every output, and its backward
    from fresh gradients: the step every check here compares or times. Returns the loss."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, enabled=images.is_cuda):
        logits = model(images)
    loss = logits.float().log_softmax(2).mean()
    loss.backward()
    return loss.detach()


def training_step(model, images) -> None:
    optimizer = adamw(model.parameters(), 1e-6, images.device)  # as training builds it
    loss = backward(model, images)
    optimizer.step()
    torch.cuda.synchronize()
    assert torch.isfinite(loss)


def kernels_agree(config: CRNNConfig, images, repeats: int = 3) -> None:
    """Raises unless training steps with the Triton step kernels (`textrec.nn.triton_steps`) give the loss and
    gradients of the same steps with the torch ops (1 % relative). Random weights, the short connection's
    projections included (a start-as-vanilla one would be zero and hide its terms). Logs both paths' step times
    op by op; `kernels_faster` decides on speed."""
    from textrec.nn import triton_steps

    if not triton_steps.applies(images.float()):
        raise RuntimeError("the Triton step kernels do not apply here (Triton missing or turned off)")
    torch.manual_seed(0)
    model = CRNN(config).to(images.device).train()
    with torch.no_grad():
        for weight in model.sequence.short_connection_weights():
            weight.uniform_(-0.1, 0.1)
    results, seconds = {}, {}
    with tensor_core_matmuls(images.device), _restored_env("TEXTREC_TRITON_RNN"):
        for kernels in ("1", "0", "1", "0"):  # warm-up (and Triton's compiling), then the timed rounds
            os.environ["TEXTREC_TRITON_RNN"] = kernels
            seconds[kernels], loss = _seconds_per_step(model, images, repeats)
            results[kernels] = [loss] + [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]
    names = ["loss"] + [name for name, _ in model.named_parameters()]
    differ = [n for n, a, b in zip(names, results["0"], results["1"]) if (a - b).norm() > 1e-2 * a.norm() + 1e-6]
    if differ:
        raise AssertionError(f"{len(differ)} of {len(names)} differ, first {differ[0]}")
    print(f"device check: the Triton step kernels agree with the torch ops (op by op: {_times(seconds, images)})", file=sys.stderr)


def kernels_faster(config: CRNNConfig, images, graphs: bool, repeats: int = 5) -> None:
    """Raises unless training steps take less time with the Triton step kernels than with the torch ops, timed
    as training runs them: with CUDA graphs of the recurrent layer when `graphs`."""
    seconds = {}
    with tensor_core_matmuls(images.device), _restored_env("TEXTREC_TRITON_RNN"):
        for kernels in ("1", "0"):
            os.environ["TEXTREC_TRITON_RNN"] = kernels
            torch.manual_seed(0)
            model = CRNN(config).to(images.device).train()
            if graphs:
                GraphedTraining(model.sequence)
            _seconds_per_step(model, images, 2)  # compiling, capturing
            seconds[kernels] = _seconds_per_step(model, images, repeats)[0]
    times = f"{_times(seconds, images)}, {'with' if graphs else 'without'} CUDA graphs"
    if seconds["1"] >= seconds["0"]:
        raise RuntimeError(f"slower: {times}")
    print(f"device check: the Triton step kernels make training steps faster ({times})", file=sys.stderr)


def _seconds_per_step(model, images, repeats: int) -> tuple[float, torch.Tensor]:
    """Mean seconds of `repeats` training steps (forward, a loss, backward; no update), the device synchronised,
    and the last step's loss."""
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)  # the tests run this on the CPU
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        loss = backward(model, images)
    sync()
    return (time.perf_counter() - start) / repeats, loss


def _times(seconds: dict, images) -> str:
    return f"{seconds['1'] * 1e3:.1f} ms per training step of {len(images)} images with them, {seconds['0'] * 1e3:.1f} ms without"


@contextlib.contextmanager
def _restored_env(name: str):
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def graphs_agree(
    config: CRNNConfig, images, steps: int = 3, finish_meanwhile: Callable[[int], object] | None = None,
    widths: tuple[int, ...] | None = None,
) -> None:
    """Raises unless training steps with CUDA graphs of the recurrent layer (the first captures, the others
    replay) give the loss and gradients of the same steps run op by op, as `textrec train` runs them.
    `widths`: step k's images are cut to widths[k % len(widths)] (each width captured when first seen, as
    width-bucketed training does).

    `finish_meanwhile(k)`, when given, runs over and over in another thread on its own CUDA stream during the
    steps, as batches finished ahead are (`--finish-ahead`): the capture must neither fail nor spoil its work."""
    torch.manual_seed(0)
    plain = CRNN(config).to(images.device).train()
    graphed = CRNN(config).to(images.device).train()
    graphed.load_state_dict(plain.state_dict())
    widths = widths or (images.shape[-1],)
    graphs = GraphedTraining(graphed.sequence, max_shapes=len(widths))
    with tensor_core_matmuls(images.device), _meanwhile(finish_meanwhile, images.device) as paused:
        graphs.quiet = paused  # as training holds its FinishAhead thread while the graphs are captured
        for step in range(steps):
            results = []
            cut = images[..., : widths[step % len(widths)]].contiguous()
            for model in (plain, graphed):
                results.append([backward(model, cut)] + [p.grad for p in model.parameters()])
            differ = []
            for (name, _), a, b in zip([("loss", None), *plain.named_parameters()], results[0], results[1]):
                # TF32 products may pick other algorithms inside a capture: allow their rounding, not a wrong gradient
                if b is None or a is None or (a - b).norm() > 1e-2 * a.norm() + 1e-6:
                    differ.append((name, None if b is None else float(b.norm()), None if a is None else float(a.norm())))
            if differ:  # every tensor that differs, by part of the model, so that a lease's log says where
                parts = {}
                for name, b, _ in differ:
                    part = parts.setdefault(name.split(".")[0], [0, 0])
                    part[0] += 1
                    part[1] += b == 0.0
                summary = ", ".join(f"{part}: {n} differ ({zero} graphed as zero)" for part, (n, zero) in parts.items())
                name, b, a = differ[0]
                raise AssertionError(f"{summary}; first {name}: graphed {b} against {a}")
    torch.cuda.synchronize()
    if graphs.failure:
        raise RuntimeError(graphs.failure)
    if graphs.replays != steps:
        raise RuntimeError(f"{graphs.replays} of {steps} steps replayed the graphs")


@contextlib.contextmanager
def _meanwhile(work: Callable[[int], object] | None, device: torch.device):
    """Run work(0), work(1), ... in a thread on a side CUDA stream until the block ends; its first error is raised
    then. Yields `paused`, a context manager that holds the thread between two calls (`FinishAhead.paused`)."""
    if work is None:
        yield contextlib.nullcontext
        return
    stop, errors, done, working = threading.Event(), [], [], threading.Lock()

    @contextlib.contextmanager
    def paused():
        with working:
            yield

    def loop() -> None:
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                while not stop.is_set():
                    with working:
                        work(len(done))
                    done.append(None)
            if stream is not None:
                stream.synchronize()
        except BaseException as error:  # noqa: BLE001  (raised in the checking thread)
            errors.append(error)

    thread = threading.Thread(target=loop, name="device-check-finish-ahead", daemon=True)
    thread.start()
    try:
        yield paused
    finally:
        stop.set()
        thread.join(timeout=60)
    if errors:
        raise RuntimeError(f"batches finished in another thread during the graphed steps failed: {errors[0]!r}") from errors[0]
    if not done:
        raise RuntimeError("no batch was finished in another thread during the graphed steps (the check tested nothing)")


def trained_config(config: CRNNConfig, recipe: dict, train_args: str) -> CRNNConfig:
    """The model `textrec train --config RECIPE --init-from CHECKPOINT $TRAIN_ARGS` trains: the checkpoint's
    architecture with the recipe's refined-gate options, overridden by those of `train_args`."""
    options = {k: v for k, v in recipe.items() if k in REFINEMENT_KEYS}
    words = shlex.split(train_args)
    options.update({words[i][2:].replace("-", "_"): words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--refine")})
    if not any(k in options for k in REFINEMENT_KEYS):
        return config
    gates = options.get("refine_gates") or "all"
    gates = parse_gate_names(gates) if isinstance(gates, str) else gates
    return dataclasses.replace(
        config, refine=options.get("refine", "none"), refine_gates=tuple(gates) or None,
        refine_init=options.get("refine_init", "default"), refine_bound=options.get("refine_bound", "none"),
        refine_rank=int(options.get("refine_rank", 0)),
    )


def _int_option(recipe: dict, train_args: str, name: str, default: int) -> int:
    """The whole-number option `name` (a recipe key) that `textrec train --config RECIPE $TRAIN_ARGS` trains with:
    the command line's last `--name value` wins over the recipe, the recipe over textrec train's default."""
    words, flag = shlex.split(train_args), "--" + name.replace("_", "-")
    given = [words[i + 1] for i in range(len(words) - 1) if words[i] == flag]
    return int(given[-1] if given else recipe.get(name, default))


def training_batch(recipe: dict, train_args: str) -> int:
    """The batch size the run trains with."""
    return _int_option(recipe, train_args, "batch_size", 64)


def width_buckets(recipe: dict, train_args: str) -> int:
    """The --width-buckets pool the run trains with (0: full-width batches)."""
    return _int_option(recipe, train_args, "width_buckets", 0)


def crop_for_check(source: SynthSource, finisher: Finisher):
    """A real-looking crop for the check: a finished synthetic image (no third-party data needed)."""
    from textrec.synth.writer import Renderer

    return Renderer(source.glyphs, finisher.scene.model_height, finisher.scene.model_width).render(1)[0][0]


if __name__ == "__main__":
    main()
