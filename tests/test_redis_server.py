import os
import subprocess
import sys
import textwrap

import redis

from arceus.launch.redis_server import EmbeddedRedis


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; /proc tells.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_embedded_redis_serves_streams_and_stops():
    server = EmbeddedRedis().start()
    pid, workdir = server.proc.pid, server._dir.name
    r = redis.Redis.from_url(server.url)
    version = tuple(int(v) for v in r.info("server")["redis_version"].split(".")[:2])
    assert version >= (6, 2)
    r.xadd("s", {"x": b"\x00\x01"})
    assert r.xrange("s")[0][1] == {b"x": b"\x00\x01"}
    r.close()
    server.stop()
    assert not _alive(pid)
    assert not os.path.exists(workdir)


def test_killed_owner_leaves_no_redis_behind(tmp_path):
    # The owner is SIGKILLed (no atexit, no finally): the kernel's parent-death signal stops redis.
    script = textwrap.dedent(
        """
        import os, signal, sys
        from arceus.launch.redis_server import EmbeddedRedis
        s = EmbeddedRedis().start()
        print(s.proc.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    pid = int(out.stdout.split()[0])
    for _ in range(100):
        if not _alive(pid):
            break
        subprocess.run(["sleep", "0.05"])
    assert not _alive(pid)


def test_ctrl_c_stops_the_embedded_redis():
    script = textwrap.dedent(
        """
        import os, signal, time
        from arceus.launch.redis_server import EmbeddedRedis
        with EmbeddedRedis() as s:
            print(s.proc.pid, flush=True)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert "KeyboardInterrupt" in out.stderr
    assert not _alive(int(out.stdout.split()[0]))
