"""The command line as a user runs it: real processes, real Redis, no network."""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from cluster import free_port


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k != "ARCEUS_REDIS_URL"}  # the embedded server
    return {**env, "ARCEUS_DATA_DIR": str(tmp_path / "nodata"), **extra}


def test_demo_runs_the_original_flow_on_the_stand_in_dataset(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "arceus.cli", "demo", "--epochs", "3", "--workers", "3"],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "offline stand-in dataset 'digits'" in out.stdout
    # flatten linear relu | linear relu | linear
    assert re.search(r"stage 2: layers \[5, 6\) on device [0-9a-f]{12}\n", out.stdout)
    assert len(re.findall(r"^epoch +\d/3 .* samples/s$", out.stdout, re.M)) == 3
    acc = float(re.search(r"completed in .* val accuracy ([0-9.]+)", out.stdout).group(1))
    assert acc > 0.5  # three epochs on the 8x8 digits: far above chance (0.1)


def test_up_serves_the_api_and_stops_everything_on_ctrl_c(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "arceus.cli", "up", "--port", str(port)],
        env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("Ctrl-C stops everything" in line for line in lines):  # up has printed everything
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs", timeout=5) as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=10)
    output = "".join(lines)
    assert proc.returncode == 0, output
    assert lines[0] == f"Dashboard  http://127.0.0.1:{port}/\n", output  # the dashboard's address first
    assert f"arceus worker --join http://127.0.0.1:{port}\n" in output  # loopback: open, no token to pass
    assert "redis://" not in output  # no Redis URL (nor password) to paste anywhere
    home = Path(os.environ["ARCEUS_HOME"])
    kept = home / "cluster.json"  # the token, made once, readable by its owner only
    assert kept.stat().st_mode & 0o777 == 0o600 and json.loads(kept.read_text())["token"]
    redis_port = json.loads((home / "redis" / "server.json").read_text())["port"]
    leftovers = subprocess.run(["pgrep", "-f", f"redis-server 127.0.0.1:{redis_port}"], capture_output=True)
    assert leftovers.returncode == 1  # no redis-server left behind
    api = subprocess.run(["pgrep", "-f", f"api.server --host 127.0.0.1 --port {port}"], capture_output=True)
    assert api.returncode == 1  # nor the API process


def test_train_with_a_bad_job_file_says_what_is_wrong(tmp_path):
    bad = tmp_path / "job.json"
    bad.write_text('{"model_config": {"layer_sizes": [784]}}')
    out = subprocess.run([sys.executable, "-m", "arceus.cli", "train", "--job", str(bad)],
                         env=_env(tmp_path), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2
    assert "error: model_config.layer_sizes: needs between 2 and 257 entries, got 1" in out.stderr


def test_arceus_alone_prints_help_and_version_works(tmp_path):
    alone = subprocess.run([sys.executable, "-m", "arceus.cli"], env=_env(tmp_path), capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert alone.returncode == 0 and alone.stdout.startswith("usage: arceus") and "doctor" in alone.stdout
    version = subprocess.run([sys.executable, "-m", "arceus.cli", "--version"], env=_env(tmp_path),
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert version.returncode == 0 and re.fullmatch(r"arceus \d+\.\d+\.\d+\n", version.stdout), version.stdout


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_help_text_is_plain_and_shows_its_defaults():
    from arceus.cli import _parser

    commands = dict(_commands(_parser()))
    assert {("jobs", "create"), ("jobs", "list"), ("jobs", "show"), ("jobs", "delete"), ("init",), ("train",),
            ("stop",), ("devices",), ("metrics",), ("export",), ("status",)} <= set(commands)  # fmt: skip
    for path, parser in commands.items():
        text = parser.format_help()
        assert "`" not in text and "``" not in text, (path, text)
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or action.default in (None, False, argparse.SUPPRESS):
                continue
            if isinstance(action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction):
                continue
            assert action.help and "default" in action.help, (path, action.dest, action.help)
