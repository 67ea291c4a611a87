"""Where a step's wall time goes in each stage process: py-spy samples of the seed job.

    python -m bench.profile_stages [--wire int8] [--stages 3] [--micro-batches 1] [--seconds 8]
                                   [--samples 60000] [--epochs 4] [--rate 200]

Trains the seed job (784-128-64-10, batch 256) across local stage processes (``train_local``, as
``arceus train`` does) on a synthetic MNIST-format set of ``--samples`` training samples, and when
epoch 2 starts samples every stage process's main thread with py-spy (idle frames included, so
waiting counts) for ``--seconds``. Each sample goes to the bucket of the first rule that matches
its stack, innermost frame first:

  compute      torch's forward, backward and optimizer step
  codec        the wire codecs (encode / decode a payload)
  send         framing commands and writing them to Redis's socket (engine/resp.py)
  wait         reading Redis's socket: a neighbour's entry, a credit, XADD replies
  data         stage 0's batches (the dataset, the prefetch thread's hand-offs)
  headers      building and parsing entry headers
  liveness     heartbeat checks on the hot path
  other        the rest of the stage's Python (loops, bookkeeping, metrics)

and the table shows each bucket's share of the stage's samples and its milliseconds per training
step (the run's steps/s measured over the same seconds from its progress events). The top
functions by own samples follow. Needs ``pip install py-spy`` (and ptrace rights: root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from arceus.config import DatasetConfig, JobConfig, ModelConfig, TrainConfig
from arceus.launch.redis_server import redis_for
from arceus.launch.stages import train_local

from .common import median_rate, synthetic_mnist

# (bucket, substrings of a frame "function (file:line)"): the first rule that matches any frame,
# innermost frame first, names the sample's bucket.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # "send (" also matches the links' _send, Sender.send and Connection.send frames.
    ("send", ("_send_all", "_pack", "sendall", "send_forward (", "send_gradient (", "send (")),
    ("wait", ("engine/resp.py", "read_response", "recv_into", "_wait_for_credit")),
    ("codec", ("wire/codecs.py", "wire/payload.py")),
    ("headers", ("messages.py",)),
    ("liveness", ("liveness.py",)),
    ("data", ("engine/source.py", "engine/data.py", "concurrent/futures", "threading.py", "queue.py")),
    ("compute", ("torch/", "engine/model.py", "engine/optim.py", "_backward", "_forward", "_optimizer_step")),
)
BUCKETS = [b for b, _ in RULES] + ["other"]


def bucket(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        for name, needles in RULES:
            if any(n in frame for n in needles):
                return name
    return "other"


def stage_pids(parent: int) -> list[int]:
    """The stage processes (multiprocessing children of ``parent``), in start order."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and b"spawn_main" in cmd:  # not the resource tracker
            found.append((int(fields[19]), int(entry.name)))
    return [pid for _, pid in sorted(found)]


def parse(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) stacks of the main thread: frames outermost first, and a count."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if "_bootstrap (" in frames[0]:
            continue  # another thread (prefetch, heartbeat): not the stage's critical path
        stacks.append((frames, int(count)))
    return stacks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wire", default="auto")
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--micro-batches", type=int, default=1)
    p.add_argument("--schedule", default="gpipe")
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--samples", type=int, default=60000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    args = p.parse_args()
    if shutil.which("py-spy") is None and not (Path(os.sys.executable).parent / "py-spy").exists():
        raise SystemExit("needs py-spy: pip install py-spy")
    spy = shutil.which("py-spy") or str(Path(os.sys.executable).parent / "py-spy")

    settings = synthetic_mnist(args.samples, 2000)
    job = JobConfig(ModelConfig((784, 128, 64, 10)), DatasetConfig(name="MNIST", batch_size=256))
    train = TrainConfig(epochs=args.epochs, wire=args.wire, micro_batches=args.micro_batches, schedule=args.schedule)
    out = Path(tempfile.mkdtemp(prefix="arceus-profile-"))
    progress: list[tuple[float, int]] = []
    started = threading.Event()
    recorders: list[subprocess.Popen] = []

    def on_event(ev: dict) -> None:
        if ev["type"] == "progress":
            progress.append((time.monotonic(), ev["job_step"]))
            if ev["epoch"] == 2 and not started.is_set():
                started.set()
                for s, pid in enumerate(stage_pids(os.getpid())):
                    recorders.append(subprocess.Popen(
                        [spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)), "--rate",
                         str(args.rate), "--idle", "--format", "raw", "--output", str(out / f"stage{s}.txt")],
                        stdout=subprocess.DEVNULL, stderr=open(out / f"stage{s}.err", "w"),
                    ))  # fmt: skip
                progress.append((time.monotonic(), -1))  # marks the start of the window

    with redis_for(settings) as url:
        result = train_local(job, train, args.stages, url, settings, on_event=on_event)
    for rec in recorders:
        rec.wait(timeout=60)
    if not started.is_set():
        raise SystemExit("the run ended before epoch 2: give it more --samples or --epochs")
    t0 = next(t for t, s in progress if s == -1)
    window = [(t, s) for t, s in progress if s != -1 and t0 <= t <= t0 + args.seconds]
    steps_per_s = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]) if len(window) > 1 else 0.0
    ms_step = 1e3 / steps_per_s if steps_per_s else float("nan")
    rate = median_rate(result.epochs)
    print(f"seed job 784-128-64-10, batch 256, {args.stages} stages, M={args.micro_batches} {args.schedule}, "
          f"wire {args.wire}; {steps_per_s:.1f} steps/s in the sampled {args.seconds:.0f} s "
          f"({ms_step:.2f} ms a step); run: {rate:,.0f} samples/s (median of epochs 2..)")  # fmt: skip
    header = f"{'stage':>5} " + " ".join(f"{b:>14}" for b in BUCKETS)
    print("\nshare of each stage's samples, and ms per step")
    print(header)
    tops = {}
    for s in range(args.stages):
        path = out / f"stage{s}.txt"
        if not path.exists():
            print(f"{s:>5}  (no samples: py-spy could not attach)")
            continue
        stacks = parse(path)
        total = sum(c for _, c in stacks) or 1
        counts = collections.Counter()
        own = collections.Counter()
        for frames, c in stacks:
            counts[bucket(frames)] += c
            own[frames[-1].split(" (")[0] + " (" + frames[-1].rsplit("/", 1)[-1] if frames else "?"] += c
        cells = [f"{100 * counts[b] / total:5.1f}% {ms_step * counts[b] / total:5.2f}ms" for b in BUCKETS]
        print(f"{s:>5} " + " ".join(f"{c:>14}" for c in cells))
        tops[s] = [(f, 100 * c / total) for f, c in own.most_common(8)]
    for s, top in tops.items():
        print(f"\nstage {s}: top frames by own samples")
        for frame, share in top:
            print(f"  {share:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
