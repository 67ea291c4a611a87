"""Communication overlapped with compute: a sender thread and a receive-ahead thread per link.

A stage hands its output to ``AsyncSender`` and goes on computing while a thread encodes
nothing more but waits on Redis (credits, the XADD round trip). ``Prefetcher`` reads and
decodes the next entries of a stream while the stage computes, so the stage finds its
input ready. Both are bounded (``depth`` items), so memory stays bounded: a link holds at
most ``window`` entries in Redis plus ``depth`` in each thread's queue.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from .streams import Receiver, Sender, Stopped

__all__ = ["AsyncSender", "Prefetcher"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_STOP = object()


class AsyncSender:
    def __init__(self, sender: Sender, depth: int) -> None:
        self.sender = sender
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"arceus-send {sender.key}")
        self._thread.start()

    def send(self, fields: dict[str, bytes], what: str) -> None:
        """Queue an entry (blocks while ``depth`` entries are still on their way)."""
        self._raise()
        self._q.put((fields, what))

    def flush(self) -> None:
        """Until every queued entry is in Redis; raises what the thread hit."""
        self._q.join()
        self._raise()

    def close(self) -> None:
        self._q.put(_STOP)
        self._thread.join(timeout=30)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is _STOP:
                    return
                if self._error is None:  # after an error, drop the rest: the stage is failing
                    self.sender.send(*item)
            except BaseException as e:  # noqa: BLE001 - handed to the stage's thread
                self._error = e
            finally:
                self._q.task_done()


class Prefetcher(Generic[T]):
    """Reads ``receiver`` ahead in a thread; ``decode`` turns each entry into what ``get`` returns."""

    def __init__(
        self,
        receiver: Receiver,
        decode: Callable[[bytes, dict[bytes, bytes]], T],
        depth: int,
        what: str,
        last: Callable[[T], bool] = lambda _: False,
    ) -> None:
        self.receiver, self.decode, self.what, self.last = receiver, decode, what, last
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"arceus-recv {receiver.key}")
        self._thread.start()

    def get(self) -> T:
        item = self._q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a put on a full queue
            try:
                self._q.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                entry_id, fields = self.receiver.recv(self.what, stop=self._stop)
                item = self.decode(entry_id, fields)
                self._q.put(item)
                if self.last(item):
                    return
        except Stopped:
            return
        except BaseException as e:  # noqa: BLE001 - handed to the stage's thread
            self._q.put(e)
