"""A LAN stand-in: two network namespaces joined by a veth pair rate-limited with tc tbf.

    sudo python -m bench.lan [--rates 100mbit 1gbit] [--model wide] [--wires int8 fp32] [--repeats 1]

Host A (namespace arc-a, 10.213.0.1) runs Redis and stage 0, host B (arc-b, 10.213.0.2)
runs stage 1, so every activation and gradient crosses the link exactly once (Redis sits
with one end of each hop; a Redis on a third host would carry each payload twice).
torch.distributed.pipelining's two ranks run on the same two hosts. Needs root, iproute2
and the tbf qdisc; the namespaces are created and deleted here, and no address outside
them is used. Every run is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arceus.config import DatasetConfig, JobConfig, ModelConfig, TrainConfig
from arceus.redis_server import find_redis_server
from arceus.runspec import RunSpec

MODELS = {"seed": [784, 128, 64, 10], "wide": [784, 2048, 2048, 2048, 10]}
NS_A, NS_B, ADDR_A, ADDR_B = "arc-a", "arc-b", "10.213.0.1", "10.213.0.2"
REDIS_PORT, TORCH_PORT = 6390, 29517


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def make_link(rate: str) -> None:
    delete_link()
    sh("ip", "netns", "add", NS_A)
    sh("ip", "netns", "add", NS_B)
    sh("ip", "link", "add", "arc-va", "netns", NS_A, "type", "veth", "peer", "name", "arc-vb", "netns", NS_B)
    for ns, dev, addr in ((NS_A, "arc-va", ADDR_A), (NS_B, "arc-vb", ADDR_B)):
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        if rate != "none":  # both directions are limited: each end shapes what it sends
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
               "rate", rate, "burst", "256kb", "latency", "100ms")  # fmt: skip


def delete_link() -> None:
    for ns in (NS_A, NS_B):
        sh("ip", "netns", "del", ns, check=False)


def in_ns(ns: str, *cmd: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], text=True, **kw)


def _communicate(p: subprocess.Popen, timeout_s: float) -> tuple[str, str]:
    try:
        return p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise RuntimeError(f"{p.args[3:6]} ran past {timeout_s:.0f}s: {err[-1500:]}") from None


def run_arceus(sizes: list[int], wire: str, schedule: str, m: int, epochs: int, tmp: Path, timeout_s: float) -> dict:
    redis_proc = in_ns(NS_A, find_redis_server(), "--bind", ADDR_A, "--port", str(REDIS_PORT), "--save", "",
                       "--appendonly", "no", "--protected-mode", "no", stdout=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.5)
    try:
        job = JobConfig(ModelConfig(tuple(sizes)), DatasetConfig(name="digits"))
        spec = RunSpec.new(job, TrainConfig(epochs=epochs, micro_batches=m, wire=wire, schedule=schedule), 2)
        spec_file = tmp / f"spec-{spec.run_id}.json"
        spec_file.write_text(json.dumps(spec.to_dict()))
        url = f"redis://{ADDR_A}:{REDIS_PORT}/0"
        env = {**os.environ, "ARCEUS_DATA_DIR": str(tmp)}
        stages = [
            in_ns(
                ns,
                sys.executable,
                "-m",
                "bench.lan_stage",
                str(spec_file),
                str(s),
                url,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            for s, ns in ((0, NS_A), (1, NS_B))
        ]
        outs = [_communicate(p, timeout_s) for p in stages]
        for p, (_, err) in zip(stages, outs, strict=True):
            if p.returncode != 0:
                raise RuntimeError(f"stage failed: {err[-2000:]}")
        rows = [json.loads(line) for line in outs[1][0].splitlines() if line.startswith("{")]
        epochs_rows = [r for r in rows if r["type"] == "epoch"]
        last = [r for r in rows if r["type"] == "stage" and r["epoch"] == epochs_rows[-1]["epoch"]]
        return {
            "samples_per_s": statistics.median(r["samples_per_s"] for r in epochs_rows[1:] or epochs_rows),
            "busy": [round(r["utilization"], 2) for r in sorted(last, key=lambda r: r["stage"])],
        }
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)


def run_torch(sizes: list[int], schedule: str, m: int, steps: int, timeout_s: float) -> float:
    cfg = json.dumps({"sizes": sizes, "micro_batches": m, "schedule": schedule, "batch": 256, "lr": 0.1,
                      "steps": steps, "warmup": 2, "threads": 1})  # fmt: skip
    ranks = [
        in_ns(
            ns,
            sys.executable,
            "-m",
            "bench.torch_peer",
            str(r),
            "2",
            ADDR_A,
            str(TORCH_PORT),
            cfg,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "GLOO_SOCKET_IFNAME": dev},
        )  # fmt: skip
        for r, ns, dev in ((0, NS_A, "arc-va"), (1, NS_B, "arc-vb"))
    ]
    outs = [_communicate(p, timeout_s) for p in ranks]
    for p, (_, err) in zip(ranks, outs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"torch rank failed: {err[-2000:]}")
    return json.loads(outs[0][0].strip().splitlines()[-1])["samples_per_s"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rates", nargs="+", default=["100mbit", "1gbit"])
    p.add_argument("--model", choices=list(MODELS), default="wide")
    p.add_argument("--wires", nargs="+", default=["int8", "fp32"])
    p.add_argument("--schedule", default="1f1b")
    p.add_argument("--micro-batches", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--torch-steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300, help="seconds any one run may take")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still delete the namespaces
    if os.geteuid() != 0:
        sys.exit("bench.lan creates network namespaces: run it as root")
    sizes = MODELS[args.model]
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="arceus-lan-") as tmp:
            for rep in range(args.repeats):
                for rate in args.rates:
                    make_link(rate)
                    t = run_torch(sizes, args.schedule, args.micro_batches, args.torch_steps, args.timeout)
                    rows.append({"rate": rate, "case": f"torch {args.schedule}", "rep": rep, "samples_per_s": t})
                    for wire in args.wires:
                        r = run_arceus(
                            sizes, wire, args.schedule, args.micro_batches, args.epochs, Path(tmp), args.timeout
                        )
                        rows.append({"rate": rate, "case": f"arceus {args.schedule} {wire}", "rep": rep, **r})
                    print(json.dumps(rows[-1 - len(args.wires) :]), flush=True)
    finally:
        delete_link()
    print(json.dumps(rows, indent=1))
    med: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        med.setdefault((row["rate"], row["case"]), []).append(row["samples_per_s"])
    print(f"\n{'-'.join(map(str, sizes))}, 2 stages, M={args.micro_batches}, {args.repeats} repeat(s)")
    print(f"{'link':8s} {'case':22s} {'samples/s':>10s} {'vs torch':>8s}")
    for (rate, case), rates in med.items():
        value = statistics.median(rates)
        torch_rate = statistics.median(med[(rate, f"torch {args.schedule}")])
        print(f"{rate:8s} {case:22s} {value:10,.0f} {value / torch_rate:8.2f}")


if __name__ == "__main__":
    main()
