import os
import socket
import subprocess
import sys
import textwrap

import pytest
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


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_a_server_bound_to_an_ipv6_address_gives_a_url_clients_can_use():
    """`arceus worker --data-bind ::1`: the address goes in brackets, or the URL names no host."""
    server = EmbeddedRedis(bind="::1", password="secret").start()
    try:
        url = server.url_for("::1")
        assert url == f"redis://:secret@[::1]:{server.port}/0"
        with redis.Redis.from_url(url) as r:
            assert r.ping() and r.connection_pool.connection_kwargs["host"] == "::1"
    finally:
        server.stop()


def _page_faults_for_entries(server: EmbeddedRedis, entries: int = 200) -> int:
    """Page faults the server takes for ``entries`` stream entries of 256 KiB, each added then
    deleted, as a link's sender and receiver do."""
    r = redis.Redis.from_url(server.url)
    payload = b"\x01" * (256 << 10)
    for _ in range(20):  # warm: the heap grows to hold one entry
        r.xdel("s", r.xadd("s", {"x": payload}))
    stat = f"/proc/{server.proc.pid}/stat"
    with open(stat) as f:
        before = int(f.read().rsplit(")", 1)[1].split()[7])  # minflt, the 10th field
    for _ in range(entries):
        r.xdel("s", r.xadd("s", {"x": payload}))
    with open(stat) as f:
        after = int(f.read().rsplit(")", 1)[1].split()[7])
    r.close()
    return after - before


def _needs_glibc_malloc(server: EmbeddedRedis) -> None:
    with redis.Redis.from_url(server.url) as r:
        if r.info("memory")["mem_allocator"] != "libc":
            pytest.skip("a server with its own allocator (jemalloc) neither needs nor reads glibc's settings")


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-fault counts from /proc")


@linux_only
def test_a_large_stream_entry_reuses_the_servers_memory_instead_of_faulting_it_in_again():
    # With glibc's defaults the server gave each freed entry back to the kernel, and faulted the next in.
    with EmbeddedRedis() as server:
        _needs_glibc_malloc(server)
        faults = _page_faults_for_entries(server)
    assert faults < 200, f"{faults} page faults for 200 entries of 256 KiB"


@linux_only
def test_the_users_own_malloc_settings_win(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4096")  # every entry mmapped
    with EmbeddedRedis() as server:
        _needs_glibc_malloc(server)
        faults = _page_faults_for_entries(server)
    assert faults >= 200 * 32  # 256 KiB is 64 pages of 4 KiB


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
