"""A LAN stand-in: one network namespace per host, each cabled to a switch (a bridge in its
own namespace) by a veth pair whose two ends are rate-limited with tc tbf.

    sudo python -m bench.lan [--stages 2] [--rates 100mbit 1gbit] [--model wide|seed|gpt] [--wires auto int8 fp32]
                             [--layouts central per-receiver] [--micro-batches 4 8] [--samples N] [--repeats 1]
                             [--torch-schedules gpipe 1f1b] [--torch-micro-batches 1 2 4 8]

Host i (namespace arc-h<i>, 10.213.0.<i+1>) runs stage i; host D (one more) is the
coordinator and runs the run's Redis: control, events and, in the central layout, every
stream, so each activation and gradient crosses the network twice (sender to coordinator,
coordinator to receiver). In the per-receiver layout each stage host also runs a
password-protected Redis holding the streams into its stage, so each payload crosses once.
torch.distributed.pipelining's ranks run on the stage hosts, in every schedule and micro-batch
count it accepts of those asked for; Arceus is compared with the best of them on each link
(its "vs torch best" column). The bytes every cable sent are
read from the hosts' interface counters around each run. Needs root, iproute2, the bridge
and the tbf qdisc; the namespaces are created and deleted here, and no address outside them
is used. Every run is bounded by a timeout.

Models: the MLPs (``wide``, ``seed``) train on a synthetic MNIST-format set of ``--samples``
images (default 6,400); ``gpt`` is bench/models.py's char GPT (6 blocks, d_model 256, block
128, batch 32, AdamW) on ``--samples`` blocks of the offline text stand-in (default 512). A
GPT sample is one 128-token block.
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
from dataclasses import replace
from pathlib import Path

from arceus.config import DatasetConfig, JobConfig, ModelConfig, TrainConfig
from arceus.launch.redis_server import find_redis_server
from arceus.plan import wires
from arceus.plan.partition import plan, units
from arceus.plan.runspec import RunSpec
from arceus.settings import Settings

from .common import last_epoch_busy, median_rate, synthetic_mnist
from .models import setup as model_setup
from .torch_peer import TorchRefused, peer_config

MLPS = {"seed": [784, 128, 64, 10], "wide": [784, 2048, 2048, 2048, 10]}
MODELS = [*MLPS, "gpt"]
SWITCH, MAX_HOSTS = "arc-sw", 8
REDIS_PORT, TORCH_PORT = 6390, 29517


def host(i: int) -> tuple[str, str, str]:
    """(namespace, interface, address) of host ``i``."""
    return f"arc-h{i}", f"arc-h{i}e", f"10.213.0.{i + 1}"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def make_lan(hosts: int, rate: str) -> None:
    delete_lan()
    sh("ip", "netns", "add", SWITCH)
    sh("ip", "-n", SWITCH, "link", "add", "arc-br", "type", "bridge")
    sh("ip", "-n", SWITCH, "link", "set", "arc-br", "up")
    for i in range(hosts):
        ns, dev, addr = host(i)
        port = f"arc-s{i}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", port, "netns", SWITCH)
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", SWITCH, "link", "set", port, "master", "arc-br")
        sh("ip", "-n", SWITCH, "link", "set", port, "up")
        if rate != "none":  # both directions of the cable: each end shapes what it sends
            for where, link in ((ns, dev), (SWITCH, port)):
                sh("ip", "netns", "exec", where, "tc", "qdisc", "add", "dev", link, "root", "tbf",
                   "rate", rate, "burst", "256kb", "latency", "100ms")  # fmt: skip


def delete_lan() -> None:
    for ns in [SWITCH] + [host(i)[0] for i in range(MAX_HOSTS)]:
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


def wire_bytes(hosts: int) -> int:
    """Bytes the hosts' cables have sent so far, all hosts together (each crossing counted once)."""
    total = 0
    for i in range(hosts):
        ns, dev, _ = host(i)
        total += int(sh("ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/tx_bytes").stdout)
    return total


def start_redis(i: int, password: str | None = None) -> subprocess.Popen:
    ns, _, addr = host(i)
    server = find_redis_server(Settings.from_env().redis_server)
    auth = ["--requirepass", password] if password else ["--protected-mode", "no"]
    return in_ns(ns, server, "--bind", addr, "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no", *auth,
                 stdout=subprocess.DEVNULL)  # fmt: skip


def model_job(model: str, samples: int | None) -> tuple[JobConfig, TrainConfig, Path]:
    """The job, its training options (schedule, M, wire and epochs set per run) and the data directory."""
    if model == "gpt":
        job, train, settings = model_setup("gpt", samples or 512)
        return job, train, settings.data_dir
    job = JobConfig(ModelConfig(tuple(MLPS[model])), DatasetConfig(name="MNIST", batch_size=256, val_batch_size=1000))
    return job, TrainConfig(), synthetic_mnist(samples or 6400, 1000).data_dir


def run_arceus(
    job: JobConfig,
    base: TrainConfig,
    stages: int,
    wire: str,
    schedule: str,
    m: int,
    epochs: int,
    tmp: Path,
    timeout_s: float,
    layout: str,
    data_dir: Path,
) -> dict:
    """Stage i on host i; the coordinator (host ``stages``) runs the run's Redis. ``per-receiver``:
    each stage host also runs a password-protected Redis that holds the streams into its stage."""
    coordinator = stages
    servers = [start_redis(coordinator)]
    data_urls: list[str | None] = [None] * stages
    if layout == "per-receiver":
        for s in range(stages):
            servers.append(start_redis(s, password=f"data-{s}"))
            data_urls[s] = f"redis://:data-{s}@{host(s)[2]}:{REDIS_PORT}/0"
    time.sleep(0.5)
    try:
        # One checkpoint, the run's last step: checkpoints go to the coordinator in every layout.
        train = replace(base, epochs=epochs, micro_batches=m, wire=wire, schedule=schedule, checkpoint_every=10**7)
        spec = replace(RunSpec.new(job, train, stages), data_urls=tuple(data_urls))
        spec_file = tmp / f"spec-{spec.run_id}.json"
        spec_file.write_text(json.dumps(spec.to_dict()))
        url = f"redis://{host(coordinator)[2]}:{REDIS_PORT}/0"
        env = {**os.environ, "ARCEUS_DATA_DIR": str(data_dir)}
        if wire == "auto":  # each stage measures its links from its host, as a worker does at initialize
            probe = [sys.executable, "-m", "bench.lan_stage", "--probe", str(spec_file)]
            reports = []
            for s in range(stages):
                p = in_ns(host(s)[0], *probe, str(s), url, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                reports.append(json.loads(_communicate(p, 120)[0].splitlines()[-1]))
            spec = replace(spec, stages=tuple(wires.choose(spec.stages, reports)))
            spec_file.write_text(json.dumps(spec.to_dict()))
        cmd = [sys.executable, "-m", "bench.lan_stage", str(spec_file)]
        sent = wire_bytes(stages + 1)
        procs = [
            in_ns(host(s)[0], *cmd, str(s), url, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for s in range(stages)
        ]
        outs = [_communicate(p, timeout_s) for p in procs]
        sent = wire_bytes(stages + 1) - sent
        for p, (_, err) in zip(procs, outs, strict=True):
            if p.returncode != 0:
                raise RuntimeError(f"stage failed: {err[-2000:]}")
        rows = [json.loads(line) for line in outs[-1][0].splitlines() if line.startswith("{")]
        epochs = [r for r in rows if r["type"] == "epoch"]
        stage_rows = [r for r in rows if r["type"] == "stage"]
        samples = sum(e["samples"] for e in epochs)
        return {"samples_per_s": median_rate(epochs), "busy": last_epoch_busy(epochs, stage_rows),
                "sending": last_epoch_busy(epochs, stage_rows, "send_s"),
                "links": [spec.wire(s) for s in range(stages - 1)],
                "network_bytes_per_sample": sent / samples}  # fmt: skip
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(timeout=10)


def run_torch(
    job: JobConfig, train: TrainConfig, stages: int, schedule: str, m: int, steps: int, timeout_s: float
) -> float:  # fmt: skip
    """Samples/s of torch's pipelining, rank r on host r, on random inputs of the job's shape."""
    cfg = json.dumps(peer_config(job, plan(job.layers, stages), train, schedule, m, steps, warmup=2, threads=1))
    ranks = []
    for r in range(stages):
        ns, dev, _ = host(r)
        cmd = [sys.executable, "-m", "bench.torch_peer", str(r), str(stages), host(0)[2], str(TORCH_PORT), cfg]
        env = {**os.environ, "GLOO_SOCKET_IFNAME": dev}
        ranks.append(in_ns(ns, *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
    outs = [_communicate(p, timeout_s) for p in ranks]
    for p, (_, err) in zip(ranks, outs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"torch rank failed: {err[-2000:]}")
    return json.loads(outs[0][0].strip().splitlines()[-1])["samples_per_s"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--rates", nargs="+", default=["100mbit", "1gbit"])
    p.add_argument("--model", choices=MODELS, default="wide")
    p.add_argument("--wires", nargs="+", default=["auto", "int8", "fp32"], help="auto: each link's measured choice")
    p.add_argument("--schedule", default="1f1b")
    p.add_argument("--micro-batches", nargs="+", type=int, default=[4], help="Arceus's; each is a case")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--samples", type=int, help="training samples an epoch (default: 6400 images, 512 GPT blocks)")
    p.add_argument("--torch-steps", type=int, default=12)
    p.add_argument("--torch-schedules", nargs="+", default=["gpipe", "1f1b"])
    p.add_argument("--torch-micro-batches", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--layouts", nargs="+", choices=["central", "per-receiver"], default=["central", "per-receiver"])
    p.add_argument("--timeout", type=float, default=300, help="seconds any one run may take")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still delete the namespaces
    if os.geteuid() != 0:
        sys.exit("bench.lan creates network namespaces: run it as root")
    job, base, data_dir = model_job(args.model, args.samples)
    most = min(MAX_HOSTS - 1, len(units(job.layers)))
    if not 2 <= args.stages <= most:
        sys.exit(f"--stages must be in [2, {most}] for this model")
    batch = job.dataset.batch_size
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="arceus-lan-") as tmp:
            for rep in range(args.repeats):
                for rate in args.rates:
                    make_lan(args.stages + 1, rate)  # the stage hosts and the coordinator
                    for sched in args.torch_schedules:  # the peer's every configuration: its best is the bar
                        for m in args.torch_micro_batches:
                            sent = wire_bytes(args.stages + 1)
                            try:
                                t = run_torch(job, base, args.stages, sched, m, args.torch_steps, args.timeout)
                            except TorchRefused:
                                continue
                            per_sample = (wire_bytes(args.stages + 1) - sent) / ((args.torch_steps + 2) * batch)
                            rows.append({"rate": rate, "case": f"torch {sched} M={m}", "rep": rep, "samples_per_s": t,
                                         "network_bytes_per_sample": per_sample})  # fmt: skip
                            print(json.dumps(rows[-1]), flush=True)
                    for m in args.micro_batches:
                        for layout in args.layouts:
                            for wire in args.wires:
                                r = run_arceus(job, base, args.stages, wire, args.schedule, m, args.epochs, Path(tmp),
                                               args.timeout, layout, data_dir)  # fmt: skip
                                case = f"arceus M={m} {wire} {layout}"
                                rows.append({"rate": rate, "case": case, "rep": rep, **r})
                                print(json.dumps(rows[-1]), flush=True)
    finally:
        delete_lan()
    print(json.dumps(rows, indent=1))
    med: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        med.setdefault((row["rate"], row["case"]), []).append(row)
    print(f"\n{args.model}, {args.stages} stages, arceus {args.schedule}, "
          f"{args.repeats} repeat(s); network bytes: all hosts' cables, per training sample")  # fmt: skip
    rate_of = {key: statistics.median(r["samples_per_s"] for r in got) for key, got in med.items()}
    best = {}  # link rate -> (samples/s, case) of torch's fastest configuration on it
    for (rate, case), value in rate_of.items():
        if case.startswith("torch") and value > best.get(rate, (0.0, ""))[0]:
            best[rate] = (value, case)
    print(f"{'link':8s} {'case':34s} {'samples/s':>10s} {'vs torch best':>13s} {'vs central':>10s} {'KB/sample':>10s}")
    for (rate, case), got in med.items():
        value = rate_of[(rate, case)]
        kb = statistics.median(r["network_bytes_per_sample"] for r in got) / 1e3
        vs_torch = f"{value / best[rate][0]:13.2f}" if rate in best else ""
        central = med.get((rate, case.replace("per-receiver", "central")))
        vs_central = ""
        if case.endswith("per-receiver") and central:
            vs_central = f"{value / statistics.median(r['samples_per_s'] for r in central):10.2f}"
        print(f"{rate:8s} {case:34s} {value:10,.0f} {vs_torch:>13s} {vs_central:>10s} {kb:10.1f}")
    for rate, (value, case) in best.items():
        print(f"{rate}: torch's best is {case} ({value:,.0f} samples/s)")
    for row in rows:
        if " auto " in row["case"]:
            print(f"{row['rate']} repeat {row['rep']} {row['case']}: links sent {', '.join(row['links'])}")


if __name__ == "__main__":
    main()
