"""``make bench-gpu``: the CUDA-only checks and a ResNet-20 CIFAR-10 epoch timed five ways, in one command.

Checks (each PASS / FAIL / WARN / skipped, with its figures):

* pruned weights stay exactly zero after masked training under bf16 and fp16 autocast (fp16 with the
  loss scaler), ``channels_last`` and ``torch.compile``;
* 2:4 semi-structured linear layers (``prunekit.export.semi_structured``): outputs against the masked
  dense layers, and their measured speed against dense (WARN below 1.0x);
* resume bit-identical on CUDA: one run trained in one go and the same run killed after its first segment
  and resumed from the checkpoint end with identical weights (deterministic kernels on);
* NCCL DDP: ``torchrun --nproc_per_node 2 prunekit run`` of a small recipe when two or more GPUs exist.

Timings: one CIFAR-10-shaped epoch (50,000 device-resident uint8 images, crop + flip on the device,
batch 128, SGD momentum 0.9, 391 steps) of ``cifar_resnet20``: eager NCHW; channels_last + bf16;
``torch.compile``; CUDA graphs (``train.cuda_graph``); packed K = 4 and 8 (per run). Each configuration
trains ``--steps`` steps after a warm-up; the epoch time is the per-step time x 391 plus one evaluation of
10,000 images, and the 160-epoch projection is 160 epochs of that. Results go to
``docs/benchmarks-gpu.md`` with the GPU's name. The whole command is sized to stay under 8 minutes on one
H100/H200 (``--budget`` seconds: later timings are skipped, and said so, when it runs out).

Without CUDA it prints one line and exits 0. ``--plumbing`` runs the same code on the CPU with tiny sizes
(what the test suite checks); its output is not a measurement.

Run: ``python -m benchmarks.bench_gpu [--out docs/benchmarks-gpu.md] [--steps 100] [--budget 480]``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
EPOCH_SAMPLES, EPOCHS, BATCH = 50_000, 160, 128
NO_CUDA = "bench-gpu: no CUDA device on this machine (torch.cuda.is_available() is False); nothing to run"


@dataclass
class Size:
    """Problem sizes: the real ones on a GPU, tiny ones for the CPU plumbing run."""

    model: str
    train_samples: int
    test_samples: int
    steps: int
    warmup: int
    check_steps: int
    linear: int  # width of the 2:4 linear layers
    tokens: int  # rows of the 2:4 timing batch


FULL = Size("cifar_resnet20", EPOCH_SAMPLES, 10_000, 100, 20, 30, 4096, 8192)
TINY = Size("lenet5", 256, 64, 10, 10, 2, 64, 64)
STEPS_PER_EPOCH = math.ceil(EPOCH_SAMPLES / BATCH)  # 391, the recipe's epoch (the timed loaders drop the last)


def cifar_shaped(n: int, seed: int):
    from prunekit.data.arrays import ArrayDataset

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return ArrayDataset(images, torch.randint(0, 10, (n,), generator=g), 10, f"cifar10-shaped/{n}")


class Bench:
    def __init__(self, device: torch.device, size: Size, budget: float):
        from prunekit.data.augment import Augment
        from prunekit.data.normalization import get_normalization

        self.device, self.size, self.deadline = device, size, time.perf_counter() + budget
        self.train = cifar_shaped(size.train_samples, 0)
        self.test = cifar_shaped(size.test_samples, 1)
        self.augment = Augment(kind="pad_crop", padding=4, flip=True)
        self.norm = get_normalization("cifar10")
        self.checks: list[tuple[str, str, str]] = []
        self.timings: list[tuple[str, str, float | None, float | None, str]] = []

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def over_budget(self) -> bool:
        return time.perf_counter() > self.deadline

    # --- building runs ---------------------------------------------------------------------------
    def trainer(self, seed: int = 0, steps: int | None = None, progress=None, checkpoint=None, **train):
        import prunekit as pk
        from prunekit.data import TensorLoader
        from prunekit.methods import METHODS, PruneContext, method_config
        from prunekit.train import TrainConfig, Trainer

        steps = steps or self.size.steps + self.size.warmup
        torch.manual_seed(seed)
        model = pk.models.create(self.size.model, num_classes=10).to(self.device)
        pruner = METHODS.get("random")(model, method_config({"name": "random", "allocation": "erk", "sparsity": 0.9}))
        pruner.on_init(PruneContext(device=self.device))
        loader = TensorLoader(self.train, BATCH, augment=self.augment, normalization=self.norm, device=self.device,
                              seed=seed, drop_last=True)
        test = TensorLoader(self.test, 1000, shuffle=False, normalization=self.norm, device=self.device)
        cfg = TrainConfig(duration=f"{steps}it", lr=0.1, momentum=0.9, weight_decay=1e-4,
                          **{"channels_last": False, "eval_every": steps, **train})
        return Trainer(model, loader, test, cfg, pruner=pruner, device=self.device, progress=progress,
                       checkpoint_path=checkpoint)

    # --- checks ----------------------------------------------------------------------------------
    def check(self, name: str, fn) -> None:
        try:
            status, detail = fn()
        except Exception as e:  # noqa: BLE001 - a failing check is reported, the others still run
            status, detail = "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        self.checks.append((name, status, detail))
        print(f"  {name:<44} {status:<8} {detail}", flush=True)

    def zeros_stay_zero(self, **train):
        t = self.trainer(steps=self.size.check_steps, **train)
        t.fit()
        masks = t.pruner.masks
        bad = sum(int((w.detach()[~m] != 0).sum()) for w, m in zip(masks.params, masks.values()))
        return ("PASS" if bad == 0 else "FAIL"), f"{bad} nonzero pruned weights after {t.step} steps"

    def semi_structured(self):
        from prunekit.export.semi_structured import nm_masks, semi_structured_supported, to_semi_structured

        if not semi_structured_supported(self.device):
            return "skipped", "needs a CUDA device with compute capability >= 8.0"
        width = self.size.linear
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width))
        model = model.to(self.device)
        masks = nm_masks(model)
        dense = to_dense_masked(model, masks).half().eval()
        sparse = to_semi_structured(model, masks)
        x = torch.randn(self.size.tokens, width, device=self.device, dtype=torch.float16)
        with torch.no_grad():
            ref, out = dense(x), sparse(x)
            err = float((out - ref).abs().max() / ref.abs().max())
            t_dense, t_sparse = self._time(lambda: dense(x)), self._time(lambda: sparse(x))
        speed = t_dense / t_sparse
        status = "FAIL" if err > 1e-2 else ("WARN" if speed < 1.0 else "PASS")
        return status, (f"max rel. error {err:.1e}; {speed:.2f}x the dense speed (batch {self.size.tokens}, "
                        f"{width}x{width} fp16){' — slower than dense' if speed < 1.0 else ''}")

    def _time(self, fn, repeats: int = 20) -> float:
        for _ in range(3):
            fn()
        self.sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        self.sync()
        return (time.perf_counter() - t0) / repeats

    def resume_identical(self):
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            steps = 2 * self.size.check_steps
            whole = self.trainer(steps=steps, eval_every=self.size.check_steps)
            whole.fit()
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "ckpt.pt"

                def kill(step, total):
                    if step > self.size.check_steps:
                        raise KeyboardInterrupt

                first = self.trainer(steps=steps, eval_every=self.size.check_steps, checkpoint=path, progress=kill)
                try:
                    first.fit()
                except KeyboardInterrupt:
                    pass
                resumed = self.trainer(steps=steps, eval_every=self.size.check_steps, checkpoint=path)
                resumed.fit()
        finally:
            torch.use_deterministic_algorithms(deterministic)
        a, b = whole.model.state_dict(), resumed.model.state_dict()
        same = all(torch.equal(a[k], b[k]) for k in a)
        return ("PASS" if same else "FAIL"), f"weights after {steps} steps {'identical' if same else 'DIFFER'}"

    def ddp(self):
        if self.device.type != "cuda" or torch.cuda.device_count() < 2:
            return "skipped", f"{torch.cuda.device_count() if self.device.type == 'cuda' else 0} GPU(s); needs 2"
        with tempfile.TemporaryDirectory() as tmp:
            recipe = Path(tmp) / "ddp.yaml"
            recipe.write_text(DDP_RECIPE)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                   "prunekit", "run", str(recipe), f"output.root={tmp}/runs", "-q"]
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=300,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return ("PASS" if proc.returncode == 0 else "FAIL"), f"torchrun exit {proc.returncode} {tail[0][:120]}"

    # --- timings ---------------------------------------------------------------------------------
    def time_config(self, label: str, pack: int = 1, **train) -> None:
        if self.over_budget():
            self.timings.append((label, "skipped: the time budget ran out", None, None, ""))
            print(f"  {label:<30} skipped (time budget)", flush=True)
            return
        from prunekit.train.packed import PackedTrainer

        size, marks = self.size, []

        def progress(step, total):  # called every 10 steps and at the end
            if step >= size.warmup:
                self.sync()
                marks.append((step, time.perf_counter()))

        try:
            trainers = [self.trainer(seed=i, progress=progress if i == 0 else None, **train) for i in range(pack)]
            if pack > 1:
                outcomes = PackedTrainer(trainers).fit()
                errors = [o for o in outcomes if isinstance(o, BaseException)]
                if errors:
                    raise errors[0]
            else:
                trainers[0].fit()
            (s0, t0), (s1, t1) = marks[0], marks[-1]
            step_time = (t1 - t0) / (s1 - s0) / pack
            eval_time = self._time(lambda: evaluate_once(trainers[0]), repeats=1) * 10_000 / size.test_samples
        except Exception as e:  # noqa: BLE001 - reported in the table, the other configurations still run
            self.timings.append((label, f"FAIL: {type(e).__name__}: {str(e).splitlines()[0][:100]}", None, None, ""))
            print(f"  {label:<30} FAIL {e}", flush=True)
            return
        epoch = step_time * STEPS_PER_EPOCH + eval_time
        note = f"per run, {pack} runs packed" if pack > 1 else ""
        self.timings.append((label, "ok", step_time, epoch, note))
        print(f"  {label:<30} {step_time * 1e3:8.2f} ms/step  epoch {epoch:7.2f} s  {EPOCHS} epochs "
              f"{epoch * EPOCHS / 60:6.1f} min {note}", flush=True)


def to_dense_masked(model: torch.nn.Module, masks) -> torch.nn.Module:
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in masks.items():
            out.get_parameter(name).mul_(mask.to(out.get_parameter(name).dtype))
    return out


def evaluate_once(trainer) -> None:
    from prunekit.train import evaluate

    evaluate(trainer.model, trainer.test_loader, trainer.channels_last)


DDP_RECIPE = """\
name: ddp
model: {name: lenet5}
data: {name: synthetic, batch_size: 64, test_batch_size: 256, augment: false}
train: {duration: 40it, eval_every: 20, lr: 0.05}
method: {name: snip, sparsity: 0.9}
device: cuda
output: {save_model: false}
"""


def render(bench: Bench, device_name: str, plumbing: bool, wall: float) -> str:
    lines = ["# GPU benchmarks", "",
             "Written by `make bench-gpu` (`python -m benchmarks.bench_gpu`); do not edit by hand.", "",
             f"Device: {device_name}. torch {torch.__version__}, CUDA {torch.version.cuda}. "
             f"Date: {dt.date.today().isoformat()}. Wall time of the command: {wall:.0f} s."]
    if plumbing:
        lines += ["", "**Plumbing run on the CPU with tiny sizes: not a measurement.**"]
    lines += ["", "## Checks", "", "| check | status | detail |", "|---|---|---|"]
    lines += [f"| {n} | {s} | {d} |" for n, s, d in bench.checks]
    lines += ["", f"## ResNet-20 CIFAR-10 epoch ({EPOCH_SAMPLES:,} images, batch {BATCH}, crop+flip on the device)", "",
              f"Model {bench.size.model}; per-step time over {bench.size.steps} steps after {bench.size.warmup} "
              f"warm-up steps; epoch = {STEPS_PER_EPOCH} steps + one evaluation of 10,000 images; projection: "
              f"{EPOCHS} epochs. Target (issue 20): 160 epochs <= 3 min on one H200.", "",
              "| configuration | status | ms / step | epoch s | 160 epochs min | note |", "|---|---|---|---|---|---|"]
    for label, status, step, epoch, note in bench.timings:
        cells = ("—", "—", "—") if step is None else (f"{step * 1e3:.2f}", f"{epoch:.2f}", f"{epoch * EPOCHS / 60:.1f}")
        lines.append(f"| {label} | {status} | {cells[0]} | {cells[1]} | {cells[2]} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-gpu.md"))
    ap.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 100)")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds after which timings are skipped")
    ap.add_argument("--plumbing", action="store_true", help="run on the CPU with tiny sizes (tests the script)")
    args = ap.parse_args(argv)
    if not args.plumbing and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS for the resume check
    t0 = time.perf_counter()
    device = torch.device("cpu" if args.plumbing else "cuda")
    size = TINY if args.plumbing else FULL
    if args.steps:
        size = Size(**{**size.__dict__, "steps": args.steps})
    if size.steps % 10 or size.warmup % 10:
        ap.error("--steps must be a multiple of 10 (the timer reads the trainer's progress every 10 steps)")
    name = "CPU (plumbing)" if args.plumbing else torch.cuda.get_device_name(device)
    print(f"bench-gpu on {name}", flush=True)
    b = Bench(device, size, args.budget)
    print("checks:", flush=True)
    b.check("pruned weights stay zero: bf16 autocast", lambda: b.zeros_stay_zero(amp="bf16"))
    if device.type == "cuda":
        b.check("pruned weights stay zero: fp16 autocast + scaler", lambda: b.zeros_stay_zero(amp="fp16"))
        b.check("pruned weights stay zero: torch.compile", lambda: b.zeros_stay_zero(compile=True))
    b.check("pruned weights stay zero: channels_last", lambda: b.zeros_stay_zero(channels_last=True))
    b.check("2:4 semi-structured: parity and speed", b.semi_structured)
    b.check("resume bit-identical", b.resume_identical)
    b.check("NCCL DDP (2 processes)", b.ddp)
    print(f"timings ({size.model}):", flush=True)
    b.time_config("eager, NCHW")
    b.time_config("channels_last + bf16", channels_last=True, amp="bf16")
    if device.type == "cuda":
        b.time_config("torch.compile", compile=True)
        b.time_config("CUDA graphs", cuda_graph=True)
    for k in (2,) if args.plumbing else (4, 8):
        b.time_config(f"packed K={k} (eager)", pack=k)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(render(b, name, args.plumbing, time.perf_counter() - t0), encoding="utf-8")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 1 if any(s == "FAIL" for _, s, _ in b.checks) else 0


if __name__ == "__main__":
    raise SystemExit(main())
