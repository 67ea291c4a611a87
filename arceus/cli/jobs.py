"""The commands that ask the API: ``status``, ``jobs``, ``init``, ``stop``, ``devices``, ``metrics``,
``export`` (and ``train JOB``, in ``train.py``). They share ``--api-url`` and the token."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from ..config import ModelConfig, seed_job
from ..control import clusterfile
from ..control.client import ApiClient
from ..errors import ApiError, ConfigError
from ..settings import Settings
from .follow import epoch_line, follow

# The statuses a job moves on from by itself (arceus.control.jobs.ACTIVE; not imported: it pulls in redis).
ACTIVE = ("initializing", "training", "recovering")
JOBS_PAGE = 200

__all__ = ["add_api_option", "add_commands", "checkpoint_line", "client_for", "job_line", "recovery_lines"]


def add_api_option(p: argparse.ArgumentParser) -> None:
    """``--api-url``, the one flag every command that asks the API takes (the token is found for it)."""
    # SUPPRESS: given to a group (arceus jobs --api-url X list) or to its command, either holds.
    p.add_argument(
        "--api-url", default=argparse.SUPPRESS, help="the API (default: ARCEUS_API_URL, else "
        "http://127.0.0.1:4000); the token is ARCEUS_TOKEN, else the one arceus worker --join or arceus up kept "
        "for that API"
    )  # fmt: skip


def _command(sub: argparse._SubParsersAction, name: str, help: str, func, job: bool = True) -> argparse.ArgumentParser:
    """A command that asks the API: its parser (with JOB first where it acts on one) and --api-url."""
    p = sub.add_parser(name, help=help)
    if job:
        p.add_argument("job_id", metavar="JOB", help="the job's id (arceus jobs list shows them)")
    add_api_option(p)
    p.set_defaults(func=func)
    return p


def add_commands(sub: argparse._SubParsersAction) -> None:
    st = _command(sub, "status", "a job's status, progress and latest metrics", cmd_status)
    st.add_argument("--follow", "-f", action="store_true", help="follow the job's live feed until it ends")

    jobs = _command(sub, "jobs", "create, list, show and delete jobs (alone: list them)", cmd_jobs_list, job=False)
    each = jobs.add_subparsers(dest="jobs_command")
    create = _command(each, "create", "create a job (POST /api/jobs) and print its id", cmd_jobs_create, job=False)
    create.add_argument("--job", type=Path, help="the job JSON, as POSTed to /api/jobs (default: the seed MNIST job)")
    _command(each, "list", "the jobs, oldest first", cmd_jobs_list, job=False)
    show = _command(each, "show", "a job: status, plan, latest figures, checkpoints, recoveries", cmd_jobs_show)
    show.add_argument("--json", action="store_true", help="the API's JSON as it is")
    _command(each, "delete", "delete a job that is not running, with its checkpoints", cmd_jobs_delete)

    init = _command(sub, "init", "initialize a job: plan it over devices, every worker loads its shard", cmd_init)
    init.add_argument("--seed", type=int, default=0, help="seeds the new weights (default 0)")
    init.add_argument("--checkpoint", help="load a checkpoint of the job instead: 'latest' or a step")
    init.add_argument(
        "--devices", nargs="+", metavar="ID", help="the devices to plan over (default: the job's own, else every "
        "free live device)"
    )  # fmt: skip
    _command(sub, "stop", "stop a job that is training", cmd_stop)
    _command(sub, "devices", "the device pool: each device's host, torch device, queue and liveness", cmd_devices,
             job=False)  # fmt: skip
    met = _command(sub, "metrics", "a job's per-epoch history (a table, or CSV for spreadsheets)", cmd_metrics)
    met.add_argument("--csv", action="store_true", help="write CSV: one row per epoch")
    met.add_argument("-o", "--output", type=Path, help="write to this file (default: stdout)")
    ex = _command(sub, "export", "download a job's trained model as one .safetensors file", cmd_export)
    ex.add_argument("-o", "--output", type=Path, help="where to write it (default: <job>-step<N>.safetensors)")
    ex.add_argument("--checkpoint", default="latest", help="the step of a checkpoint (default: the latest)")


def client_for(args: argparse.Namespace) -> ApiClient:
    """The API of ``--api-url`` (else ARCEUS_API_URL), with the cluster token: ARCEUS_TOKEN, else
    the one this machine keeps for that API ($ARCEUS_HOME/cluster.json)."""
    settings = Settings.from_env()
    url = getattr(args, "api_url", None) or settings.api_url
    return ApiClient(url, token=settings.token or clusterfile.token_for(settings.home, url))


def job_line(job: dict) -> str:
    p, m = job.get("progress") or {}, job.get("latest_metrics") or {}
    parts = [f"{job['job_id']}  {job['status']:<12}"]
    if "step" in p:
        parts.append(f"epoch {p['epoch']} step {p['step']}/{p['steps']} loss {p['loss']:.4f}")
    if m:
        parts.append(f"last epoch {m['epoch']}/{m['epochs']}: val acc {m['val_accuracy']:.4f}, "
                     f"{m['samples_per_s']:,.0f} samples/s")  # fmt: skip
    if job.get("error"):
        parts.append(f"error: {job['error']}")
    return "  ".join(parts)


def checkpoint_line(job: dict) -> str | None:
    if not job.get("checkpoints"):
        return None
    c = job["checkpoints"][-1]
    m = c.get("metrics") or {}
    where = f"epoch {c['epoch'] + 1} batch {c['batch'] + 1}" if c["batch"] else f"end of epoch {c['epoch']}"
    acc = f", val acc {m['val_accuracy']:.4f}" if "val_accuracy" in m else ""
    return f"  last checkpoint: step {c['step']} ({where}{acc}); export it with `arceus export {job['job_id']}`"


def recovery_lines(job: dict) -> list[str]:
    return [f"  recovered: device {r['device_lost']} (stage {r['stage_lost']}) lost at step {r['at_step']}"
            f"{' (' + r['cause'] + ')' if r.get('cause') else ''}; "
            f"resumed from step {r['resumed_from_step']} on devices {r['devices']} after {r['seconds']:.1f}s "
            f"({r['steps_redone']} steps redone)" for r in job.get("recoveries") or []]  # fmt: skip


def cmd_status(args: argparse.Namespace) -> int:
    client = client_for(args)
    job = client.get(f"/api/jobs/{args.job_id}")
    print(job_line(job), flush=True)
    if args.follow and job["status"] in ACTIVE:
        job = follow(client, args.job_id, run_id=job.get("run_id"))  # the current run, from its start
        print(job_line(job))
    for line in [checkpoint_line(job), *recovery_lines(job)]:
        if line:
            print(line)
    return 0 if job["status"] != "failed" else 1


def cmd_export(args: argparse.Namespace) -> int:
    client = client_for(args)
    step = args.checkpoint
    if step == "latest":  # name the file by the step it holds
        job = client.get(f"/api/jobs/{args.job_id}")
        if not job["checkpoints"]:
            raise ApiError(f"job {args.job_id} has no checkpoint yet: one is saved at the end of every epoch")
        step = job["checkpoints"][-1]["step"]
    dest = args.output or Path(f"{args.job_id}-step{step}.safetensors")
    size = client.download(f"/api/jobs/{args.job_id}/model?checkpoint={step}", dest)
    print(f"wrote {dest} ({size:,} bytes, step {step}); load it with arceus.load_model({str(dest)!r})")
    return 0


def cmd_jobs_list(args: argparse.Namespace) -> int:
    client, offset, printed = client_for(args), 0, 0
    while True:  # every page
        page = client.get(f"/api/jobs?offset={offset}&limit={JOBS_PAGE}")
        for job in page["jobs"]:
            model, data = ModelConfig.describe(job["model_config"]), job["dataset_config"]["name"]
            print(f"{job_line(job)}  [{model} on {data}, {len(job['devices'])} devices]")
        printed += len(page["jobs"])
        offset += JOBS_PAGE
        if offset >= page["total"]:
            break
    if not printed:
        print("no jobs: create one with `arceus jobs create --job job.json`")
    return 0


def cmd_jobs_create(args: argparse.Namespace) -> int:
    if args.job:
        try:
            body = json.loads(args.job.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError("--job", f"cannot read {args.job}: {e}") from None
    else:
        body = seed_job()
    job_id = client_for(args).post("/api/jobs", body)["job_id"]
    print(job_id)
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    job = client_for(args).get(f"/api/jobs/{args.job_id}")
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    print(job_line(job))
    print(f"  model: {ModelConfig.describe(job['model_config'])} on {job['dataset_config']['name']}; "
          f"created {_when(job['created_at'])}, updated {_when(job['updated_at'])}")  # fmt: skip
    names = {d["device_id"]: d.get("name") or d["device_id"] for d in job["devices"]}
    for s in job.get("plan") or []:
        where = names.get(s["device_id"], s["device_id"])
        print(f"  stage {s['stage']}: layers [{s['start_layer']}, {s['end_layer']}) on {where} "
              f"({s.get('params', 0):,} parameters)")  # fmt: skip
    for line in [checkpoint_line(job), *recovery_lines(job)]:
        if line:
            print(line)
    return 0


def cmd_jobs_delete(args: argparse.Namespace) -> int:
    print(client_for(args).delete(f"/api/jobs/{args.job_id}")["message"])
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    body: dict = {"seed": args.seed}
    if args.checkpoint is not None:
        body["checkpoint"] = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
    if args.devices:
        body["devices"] = args.devices
    print(f"initializing {args.job_id}: every device's worker loads its shard...", flush=True)
    reply = client_for(args).post(f"/api/network/initialize/{args.job_id}", body)
    for s in reply["plan"]:
        print(f"  stage {s['stage']}: layers [{s['start_layer']}, {s['end_layer']}) on device {s['device_id']}")
    print(f"ready: train it with `arceus train {args.job_id} --epochs N`")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    print(client_for(args).post(f"/api/network/stop/{args.job_id}")["message"])
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    devices = client_for(args).get("/api/devices")["devices"]
    if not devices:
        print("no devices: run `arceus worker --join <API>` on each machine that should hold layers")
        return 0
    rows = [("DEVICE", "NAME", "HOST", "TORCH", "QUEUE", "LIVE", "SEEN")]
    for d in devices:
        seen = f"{d['last_seen_s']:.1f}s ago" if d.get("last_seen_s") is not None else "never"
        rows.append((d["device_id"], d.get("name") or "-", d.get("host") or "-", d.get("torch_device") or "-",
                     d["queue"], "yes" if d["alive"] else "no", seen))  # fmt: skip
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


# The per-epoch columns, in the order a spreadsheet shows them.
METRIC_COLUMNS = ("epoch", "epochs", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "samples_per_s",
                  "seconds", "samples")  # fmt: skip


def cmd_metrics(args: argparse.Namespace) -> int:
    epochs = client_for(args).get(f"/api/jobs/{args.job_id}/metrics")["epochs"]
    extra = sorted({k for e in epochs for k in e} - set(METRIC_COLUMNS) - {"type", "time"})
    columns = [*METRIC_COLUMNS, *extra]
    out = args.output.open("w", newline="") if args.output else sys.stdout
    try:
        if args.csv:
            writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(epochs)
        elif not epochs:
            print(f"job {args.job_id} has no finished epoch yet", file=out)
        else:
            for e in epochs:
                print(epoch_line(e), file=out)
    finally:
        if args.output:
            out.close()
    if args.output:
        print(f"wrote {len(epochs)} epochs to {args.output}")
    return 0


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))
