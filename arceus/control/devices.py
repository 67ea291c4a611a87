"""The device pool: machines that registered once and serve jobs until they go away (no torch).

A device has a random id (its queue is ``device-<id>``: never reused, even by a Redis that lost
its data), an optional unique name, and a lease: ``keys.device_beat``, renewed every
``BEAT_S`` by the heartbeat of the Celery worker that serves its queue (``DeviceBeat``, started
by ``workers/celery.py``). A device whose lease ran out drops out of planning by itself; a
worker that registers again under its name takes its id back. Registration and name
uniqueness are one Lua script, so twenty parallel registrations of a name make one device.
A device deleted through the API stays deleted: its worker stops holding its lease.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid

import redis

from .. import keys
from ..codeid import code_id
from ..errors import Conflict, NotFound

__all__ = ["BEAT_S", "LEASE_S", "DeviceBeat", "DeviceRegistry", "check_device_id"]

log = logging.getLogger(__name__)

# What a device's worker says of itself as it starts, always its own (a field it does not send
# is cleared): its matmul GFLOP/s and free memory (engine.device.describe_machine), which the
# plan divides the work by, and its data Redis (the streams into its stages), if it runs one.
# The code it runs (arceus.codeid) is in its lease instead: it is the code of whichever worker
# holds the lease now, and of none once the lease lapses.
WORKER_FIELDS = ("gflops", "free_memory_gb", "data_url")
BEAT_S = 2.0  # a worker renews its devices' leases this often
LEASE_S = 10.0  # a device unheard of this long is not live: planning skips it, its name is free again
REGISTERED = b"registered"  # the lease a registration holds until its worker first beats
DELETED_TTL_S = 24 * 3600  # how long a deleted device's worker is told so (keys.device_deleted)

_ID = re.compile(r"^[0-9a-f]{6,32}$")

# Atomically: refuse a name a live device holds; take back the id of a dead device of that name;
# else a fresh id (or the one a worker re-registering after a Redis restart asks for); write the
# record with its id and queue, and a lease. KEYS: names hash, devices set. ARGV: key prefix of
# device records, name ('' for none), wanted id ('' for any), fresh id, record JSON, lease s, beat.
_REGISTER = """
local names, devices, prefix = KEYS[1], KEYS[2], ARGV[1]
local name, wanted, fresh = ARGV[2], ARGV[3], ARGV[4]
local id = nil
if name ~= '' then
  local holder = redis.call('HGET', names, name)
  if holder and holder ~= wanted then
    if redis.call('EXISTS', prefix .. holder .. ':beat') == 1 then return {'taken', holder} end
    if wanted == '' then
      id = holder
    else
      redis.call('DEL', prefix .. holder)
      redis.call('SREM', devices, holder)
    end
  end
end
if not id then
  if wanted ~= '' then id = wanted else id = fresh end
end
local record = cjson.decode(ARGV[5])
local old = redis.call('GET', prefix .. id)
if old then
  local previous = cjson.decode(old)
  record['registered_at'] = previous['registered_at']
  if previous['name'] and previous['name'] ~= name and redis.call('HGET', names, previous['name']) == id then
    redis.call('HDEL', names, previous['name'])
  end
end
record['device_id'] = id
record['queue'] = 'device-' .. id
if name ~= '' then record['name'] = name; redis.call('HSET', names, name, id) end
redis.call('SET', prefix .. id, cjson.encode(record))
redis.call('SADD', devices, id)
redis.call('SET', prefix .. id .. ':beat', ARGV[7], 'PX', ARGV[6])
return {'ok', id}
"""


def check_device_id(device_id: str) -> str:
    """``device_id`` if it is one (6 to 32 lowercase hex digits: it becomes a key and a queue name)."""
    if not isinstance(device_id, str) or not _ID.match(device_id):
        raise NotFound(f"device {device_id!r} does not exist (device ids are 6 to 32 hex digits)")
    return device_id


class DeviceRegistry:
    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._register = r.register_script(_REGISTER)

    def register(self, info: dict, device_id: str | None = None) -> str:
        """Register a device (``info``: name, host, torch device, memory, ...); returns its id.
        Conflict when a live device holds the name; a dead one's id is taken back."""
        name = str(info.get("name") or "")
        record = {k: v for k, v in info.items() if k not in ("device_id", "queue", "name")}
        record["registered_at"] = time.time()
        wanted = check_device_id(device_id) if device_id else ""
        args = [keys.device(""), name, wanted, uuid.uuid4().hex[:12], json.dumps(record), int(LEASE_S * 1000),
                REGISTERED]  # fmt: skip
        status, held = self._register(keys=[keys.DEVICE_NAMES, keys.DEVICES], args=args)
        if status == b"taken":
            holder = held.decode()
            raise Conflict(
                f"a live device named {name!r} is registered (device {holder}, heard from within {LEASE_S:.0f}s): "
                "pick another name, or stop that worker; a device whose worker is gone frees its name "
                f"{LEASE_S:.0f}s after its last heartbeat"
            )
        return held.decode()

    def get(self, device_id: str) -> dict:
        raw = self.r.get(keys.device(check_device_id(device_id)))
        if raw is None:
            raise NotFound(f"device {device_id} does not exist")
        return self._with_lease(json.loads(raw), self.r.get(keys.device_beat(device_id)), self.now())

    def all(self) -> list[dict]:
        """Every registered device, with its lease (``alive``, ``worker``, ``last_seen_s``), by registration."""
        ids = [i.decode() for i in self.r.smembers(keys.DEVICES)]
        return sorted(self.some(ids), key=lambda d: d.get("registered_at", 0))

    def some(self, ids: list[str]) -> list[dict]:
        """The devices of ``ids`` that exist, in that order, with their leases."""
        if not ids:
            return []
        raws = self.r.mget([keys.device(i) for i in ids] + [keys.device_beat(i) for i in ids])
        records, beats = raws[: len(ids)], raws[len(ids) :]
        now, pairs = self.now(), zip(records, beats, strict=True)
        return [self._with_lease(json.loads(rec), beat, now) for rec, beat in pairs if rec is not None]

    def live(self) -> list[dict]:
        """Devices a worker serves now (their lease is a worker's heartbeat), by registration."""
        return [d for d in self.all() if d["alive"]]

    def update(self, device_id: str, **fields: object) -> None:
        """Set ``fields`` of the device's record; a field set to None is removed."""
        raw = self.r.get(keys.device(device_id))
        if raw is not None:
            record = {k: v for k, v in {**json.loads(raw), **fields}.items() if v is not None}
            self.r.set(keys.device(device_id), json.dumps(record), xx=True)  # not one deleted meanwhile

    def delete(self, device_id: str) -> None:
        record = self.get(device_id)
        pipe = self.r.pipeline()
        pipe.delete(keys.device(device_id), keys.device_beat(device_id))
        pipe.set(keys.device_deleted(device_id), "1", ex=DELETED_TTL_S)  # or its worker registers it again
        pipe.srem(keys.DEVICES, device_id)
        if record.get("name"):
            pipe.hdel(keys.DEVICE_NAMES, record["name"])
        pipe.execute()

    def workers(self) -> list[str]:
        """The Celery workers whose heartbeat holds a device's lease (``device-<id>@host``)."""
        return sorted({d["worker"] for d in self.live()})

    def now(self) -> float:
        """Redis's clock: heartbeats are stamped with it too, so machines' clocks never skew an age."""
        seconds, micros = self.r.time()
        return seconds + micros / 1e6

    @staticmethod
    def _with_lease(record: dict, beat: bytes | None, now: float) -> dict:
        lease = json.loads(beat) if beat and beat != REGISTERED else None
        record["alive"] = lease is not None
        record["worker"] = lease["worker"] if lease else None
        record["last_seen_s"] = round(max(0.0, now - lease["at"]), 1) if lease else None
        if lease and lease.get("code"):  # the code of the worker holding the lease (one from before code ids: none)
            record["code"] = lease["code"]
        return record


class DeviceBeat:
    """A worker's heartbeat for the devices whose queues it serves: renews their leases every
    ``BEAT_S``; a device whose record is gone because Redis restarted without its data is
    registered again under its id, with ``info`` (what the machine is). A device deleted through
    the API is dropped: this worker stops holding its lease."""

    def __init__(self, r: redis.Redis, device_ids: list[str], worker: str, info: dict) -> None:
        self.registry, self.r = DeviceRegistry(r), r
        self.device_ids, self.worker, self.info = device_ids, worker, info
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        # Redis's clock; the code this worker runs goes with the lease it holds
        value = json.dumps({"worker": self.worker, "pid": os.getpid(), "at": self.registry.now(), "code": code_id()})
        for device_id in list(self.device_ids):
            pipe = self.r.pipeline()  # one MULTI, as the API's delete: it lands wholly before or after
            pipe.exists(keys.device_deleted(device_id))
            pipe.set(keys.device_beat(device_id), value, px=int(LEASE_S * 1000))
            pipe.get(keys.device(device_id))
            deleted, _, raw = pipe.execute()
            if deleted:
                self.r.delete(keys.device_beat(device_id))
                self.device_ids.remove(device_id)
                log.warning("device %s was deleted through the API: this worker no longer holds its lease, so no "
                            "plan gives it work; stop the worker, or start `arceus worker` again to register this "
                            "machine anew", device_id)  # fmt: skip
            elif raw is None:
                self._register_again(device_id)
                self.r.set(keys.device_beat(device_id), value, px=int(LEASE_S * 1000))

    def first_beat(self) -> None:
        """Fill in what the machine is where the registration did not say (a device registered by
        hand with only a name); what it said wins (a memory it declared), except ``WORKER_FIELDS``:
        those are always this worker's."""
        for device_id in self.device_ids:  # before the beat: a plan of the live device sees all of it
            raw = self.r.get(keys.device(device_id))
            if raw is not None:
                record = json.loads(raw)
                fresh = {k: v for k, v in self.info.items() if k not in record}
                self.registry.update(device_id, **{**fresh, **{k: self.info.get(k) for k in WORKER_FIELDS}})
                if record.get("name"):  # kept for registering again under it
                    self.info["name"] = record["name"]
        self.beat()

    def _register_again(self, device_id: str) -> None:
        try:
            self.registry.register(self.info, device_id)
        except Conflict:  # another live device took the name meanwhile: keep the id, drop the name
            self.registry.register({k: v for k, v in self.info.items() if k != "name"}, device_id)
        log.warning("device %s was not registered (Redis lost its data?): registered it again", device_id)

    def start(self) -> DeviceBeat:
        self._thread = threading.Thread(target=self._loop, name="arceus-device-beat", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        beat, first = self.first_beat, True
        while True:
            try:
                beat()
                beat = self.beat
                first = False
            except redis.RedisError as e:  # Redis down: keep trying; the lease says the rest
                log.warning("device heartbeat failed%s: %s", " (the first)" if first else "", e)
            if self._stop.wait(BEAT_S):
                return

    def stop(self) -> None:
        """Stop beating and give the leases up: the devices are not live from now on."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.r.delete(*[keys.device_beat(i) for i in self.device_ids])
        except redis.RedisError:
            pass
