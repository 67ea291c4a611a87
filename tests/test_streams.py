import threading
import time

import pytest
import redis

from arceus import keys
from arceus.engine.streams import POLL_S, Receiver, Sender
from arceus.errors import RunAborted, StageTimeout
from arceus.keys import RunKeys
from arceus.liveness import RunLiveness


def _liveness(r) -> RunLiveness:
    return RunLiveness(r, RunKeys("j", "r"))


def _eventually(check, timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _blocked_clients(r) -> list[dict]:
    return [c for c in r.client_list() if "b" in c["flags"]]


def test_messages_arrive_in_order_and_are_deleted_once_taken(r):
    liveness = _liveness(r)
    tx = Sender(r, "t:fwd:1", window=4, timeout_s=5, liveness=liveness, who="stage 0")
    rx = Receiver(r, "t:fwd:1", timeout_s=5, liveness=liveness, who="stage 1")
    for i in range(3):
        tx.send({"i": str(i).encode()}, "test")
    tx.flush()  # every XADD answered
    assert r.xlen("t:fwd:1") == 3
    got = [rx.recv("test")[1][b"i"] for _ in range(2)]
    assert got == [b"0", b"1"]
    # Each entry handed out is deleted (and its credit returned) with the read of the next.
    assert _eventually(lambda: r.xlen("t:fwd:1") == 1 and r.llen(keys.credit("t:fwd:1")) == 2)
    assert rx.recv("test")[1][b"i"] == b"2"
    assert _eventually(lambda: r.xlen("t:fwd:1") == 0)
    tx.close()
    rx.close()
    assert not r.exists("t:fwd:1") and not r.exists(keys.credit("t:fwd:1"))


def test_a_run_that_did_not_finish_leaves_no_stream_behind_whichever_end_closes_first(r):
    """A stopped run: the receiver drops its stream, then its sender, not yet stopped, sends one more
    entry, which makes the stream again. The sender's close drops it (the stream may live in a worker's
    data Redis, which no run sweeps); a finished run's sender leaves its receiver's stream alone."""
    liveness = _liveness(r)
    tx = Sender(r, "t:fwd:1", window=4, timeout_s=5, liveness=liveness, who="stage 0")
    rx = Receiver(r, "t:fwd:1", timeout_s=5, liveness=liveness, who="stage 1")
    tx.send({"i": b"0"}, "test")
    assert rx.recv("test")[1][b"i"] == b"0"
    rx.close()
    tx.send({"i": b"1"}, "test")
    tx.flush()
    assert r.xlen("t:fwd:1") == 1  # made again, and would stay for keys.RUN_TTL_S
    tx.close(drop=True)
    assert not r.exists("t:fwd:1") and not r.exists(keys.credit("t:fwd:1"))
    tx = Sender(r, "t:fwd:2", window=4, timeout_s=5, liveness=liveness, who="stage 1")
    tx.send({"i": b"0"}, "test")
    tx.close()
    assert r.xlen("t:fwd:2") == 1


def test_a_send_does_not_wait_for_redis_but_its_error_is_raised(r):
    """XADD replies are read later; an error Redis answered is not lost."""
    r.set("t:fwd:1", "not a stream")
    tx = Sender(r, "t:fwd:1", window=4, timeout_s=5, liveness=_liveness(r), who="stage 0")
    tx.send({"a": b"1"}, "activations")  # returns before Redis answers
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        tx.flush()
    tx.close()


def test_credits_come_back_with_the_sends_so_a_sender_kept_up_with_never_blocks_for_them(r):
    """Once half its window is used, a sender asks for its credits along with its next XADD and
    counts them when that reply is read; it waits for credits (BLPOP) only when it has none."""
    liveness = _liveness(r)
    tx = Sender(r, "t:fwd:1", window=4, timeout_s=5, liveness=liveness, who="stage 0")
    rx = Receiver(r, "t:fwd:1", timeout_s=5, liveness=liveness, who="stage 1")
    r.config_resetstat()
    for i in range(40):
        tx.send({"i": str(i).encode()}, "test")
        assert rx.recv("test")[1][b"i"] == str(i).encode()
        tx.flush(wait=False)
    tx.flush()
    stats = r.info("commandstats")
    assert "cmdstat_blpop" not in stats
    assert stats["cmdstat_lpop"]["calls"] >= 40 // 4
    tx.close()
    rx.close()


def test_a_sender_collects_the_replies_already_in_without_waiting_for_the_others(r):
    """``flush(wait=False)``, what a stage does before each receive, reads only the replies that
    have come in: on a slow link an XADD is answered once its payload is across, and waiting for
    that would hold the stage up for the transfer. ``flush()`` waits for them all."""
    tx = Sender(r, "t:fwd:1", window=4, timeout_s=5, liveness=_liveness(r), who="stage 0")
    tx.send({"i": b"0"}, "test")
    tx.flush()
    r.execute_command("CLIENT", "PAUSE", 600, "WRITE")  # Redis holds writes, as a slow link would
    try:
        t0 = time.monotonic()
        tx.send({"i": b"1"}, "test")
        tx.flush(wait=False)
        assert time.monotonic() - t0 < 0.3
        tx.flush()
        assert time.monotonic() - t0 > 0.4
    finally:
        r.execute_command("CLIENT", "UNPAUSE")
    assert r.xlen("t:fwd:1") == 2
    tx.close()


def test_a_read_ahead_that_times_out_is_asked_again(r):
    """The read of the next entry is in flight while the caller works; if it outlasts a
    poll (``POLL_S``) empty, the next ``recv`` asks again and still gets the entry."""
    liveness = _liveness(r)
    tx = Sender(r, "t:fwd:1", window=4, timeout_s=5, liveness=liveness, who="stage 0")
    rx = Receiver(r, "t:fwd:1", timeout_s=5, liveness=liveness, who="stage 1")
    tx.send({"i": b"0"}, "test")
    assert rx.recv("test")[1][b"i"] == b"0"
    # The read-ahead blocks in Redis until its poll expires empty; then no client is blocked.
    assert _eventually(lambda: _blocked_clients(r))
    assert _eventually(lambda: not _blocked_clients(r), timeout_s=POLL_S + 5)
    tx.send({"i": b"1"}, "test")
    assert rx.recv("test")[1][b"i"] == b"1"
    tx.close()
    rx.close()


def test_window_bounds_the_stream_and_blocks_the_sender(r):
    liveness = _liveness(r)
    tx = Sender(r, "t:fwd:1", window=3, timeout_s=10, liveness=liveness, who="stage 0")
    rx = Receiver(r, "t:fwd:1", timeout_s=10, liveness=liveness, who="stage 1")
    lengths, sent = [], []

    def produce():
        for i in range(20):
            tx.send({"i": str(i).encode()}, "test")
            tx.flush()  # the XADD has reached Redis
            sent.append(i)
            lengths.append(r.xlen("t:fwd:1"))

    th = threading.Thread(target=produce)
    th.start()
    assert _eventually(lambda: len(sent) == 3)
    time.sleep(0.2)
    assert len(sent) == 3  # back-pressure: the fourth send waits for the receiver
    got = []
    for _ in range(20):
        got.append(int(rx.recv("test")[1][b"i"]))
        time.sleep(0.005)
    th.join(timeout=10)
    assert got == list(range(20))
    assert max(lengths) <= 3


def test_receive_timeout_names_the_stage_and_what_it_waited_for(r):
    rx = Receiver(r, "t:bwd:0", timeout_s=0.3, liveness=_liveness(r), who="stage 0 (layers [0, 1))")
    t0 = time.monotonic()
    with pytest.raises(StageTimeout, match=r"stage 0 \(layers \[0, 1\)\) waited 0s for gradients of step 3"):
        rx.recv("gradients of step 3")
    assert time.monotonic() - t0 < 2


def test_send_timeout_when_receiver_never_consumes(r):
    tx = Sender(r, "t:fwd:1", window=1, timeout_s=0.3, liveness=_liveness(r), who="stage 0")
    tx.send({"a": b"1"}, "activations")
    with pytest.raises(StageTimeout, match="stage 0 waited 0s to send activations"):
        tx.send({"a": b"2"}, "activations")


def test_abort_wakes_a_waiting_receiver(r):
    liveness = _liveness(r)
    rx = Receiver(r, "t:fwd:1", timeout_s=30, liveness=liveness, who="stage 1")
    threading.Timer(0.2, liveness.abort, args=("stage 2: boom",)).start()
    t0 = time.monotonic()
    with pytest.raises(RunAborted, match="stage 2: boom"):
        rx.recv("activations")
    assert time.monotonic() - t0 < 3


def test_a_link_whose_connection_dropped_fails_with_a_connection_error_and_still_closes(r):
    tx = Sender(r, "t:fwd:1", window=4, timeout_s=5, liveness=_liveness(r), who="stage 0")
    tx.conn.send(("CLIENT", "ID"))
    r.client_kill_filter(_id=tx.conn.read())
    with pytest.raises(redis.ConnectionError):
        tx.send({"a": b"1"}, "activations")
        tx.flush()
    tx.close()  # nothing left to read on a dead connection: no error of its own
    rx = Receiver(r, "t:fwd:2", timeout_s=5, liveness=_liveness(r), who="stage 1")
    rx.conn.send(("CLIENT", "ID"))
    r.client_kill_filter(_id=rx.conn.read())
    with pytest.raises(redis.ConnectionError):
        rx.recv("activations")
    rx.close()


def test_a_send_redis_refused_fails_a_stage_that_waits_to_receive(r):
    """Redis answers an XADD once its payload is across, so a stage may start to wait for its next
    input before the answer comes; a refusal (here: out of memory) still ends the wait, with its
    error, not as a timeout."""
    liveness = _liveness(r)
    tx = Sender(r, "t:fwd:1", window=4, timeout_s=5, liveness=liveness, who="stage 0")
    rx = Receiver(r, "t:bwd:0", timeout_s=5, liveness=liveness, who="stage 0")
    r.config_set("maxmemory", 1)  # every write is refused: -OOM
    try:
        tx.send({"i": b"0"}, "test")  # its replies are not read here
        with pytest.raises(redis.ResponseError, match="OOM"):
            rx.recv("gradients", on_wait=lambda: tx.flush(wait=False))
    finally:
        r.config_set("maxmemory", 0)
    rx.close()


@pytest.mark.parametrize("window", [1, 2, 8])
def test_the_replies_a_sender_owes_are_bounded_by_its_window(r, window):
    """A sender reads its replies only when a stage asks (before a receive) or when it runs out of
    credits, which come in those replies: so however many entries it sends in a row, it never owes
    more than one XADD and one EXPIRE a credit plus one LPOP, and every entry arrives in order."""
    liveness = _liveness(r)
    tx = Sender(r, "t:fwd:1", window=window, timeout_s=5, liveness=liveness, who="stage 0")
    rx = Receiver(r, "t:fwd:1", timeout_s=5, liveness=liveness, who="stage 1")
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(rx.recv("test")[1][b"i"] for _ in range(60)))
    reader.start()
    owed = []
    for i in range(60):
        tx.send({"i": str(i).encode()}, "test")
        owed.append(len(tx._pending))
    reader.join(timeout=10)
    assert got == [str(i).encode() for i in range(60)]
    # Reached, not only respected: no send waits for its own replies (at window 1 one used to wait
    # for its XADD's, which on a slow link is the whole transfer).
    assert max(owed) == 2 * window + 1, owed
    tx.close()
    rx.close()
