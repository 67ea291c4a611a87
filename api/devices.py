"""Devices: register (one queue per device), list, unregister; the Celery workers serving them."""

from __future__ import annotations

from flask import current_app
from flask.views import MethodView

from arceus.control.devices import check_device_id
from arceus.keys import queue_for

from .errors import Blueprint
from .schemas import (
    DeviceRegisteredSchema,
    DeviceRegisterSchema,
    DeviceSchema,
    DevicesSchema,
    MessageSchema,
    WorkersSchema,
)

blp = Blueprint("devices", __name__, url_prefix="/api/devices", description="Devices (one Celery queue each)")


@blp.route("/register")
class Register(MethodView):
    @blp.arguments(DeviceRegisterSchema, required=False)
    @blp.response(201, DeviceRegisteredSchema)
    def post(self, body):
        """Register a device: into the pool, or for a job (``job_id``, the original flow). Its worker
        serves the returned queue; a name is unique among live devices. Every field is optional."""
        body = dict(body or {})
        store = current_app.extensions["arceus"].store
        job_id = body.pop("job_id", None)
        if job_id is not None:
            store.check_attachable(job_id)  # 404 / 409 before anything is registered
        device_id = store.devices.register(body)
        if job_id is not None:
            store.attach(job_id, device_id)
        return {
            "message": "Device registered successfully",
            "device_id": device_id,
            "queue": queue_for(device_id),
            "worker_command": f"celery -A workers worker -Q {queue_for(device_id)}",
        }


@blp.route("")
class Devices(MethodView):
    @blp.response(200, DevicesSchema)
    def get(self):
        """All registered devices, with their leases (alive: a worker's heartbeat was heard lately)."""
        return {"devices": current_app.extensions["arceus"].store.devices.all()}


@blp.route("/<device_id:device_id>")
class Device(MethodView):
    @blp.response(200, DeviceSchema)
    def get(self, device_id):
        """One device: what its worker reported, its queue and its lease."""
        return current_app.extensions["arceus"].store.devices.get(device_id)

    @blp.response(200, MessageSchema)
    def delete(self, device_id):
        """Unregister a device (not while a job it serves initializes, trains or recovers)."""
        current_app.extensions["arceus"].store.forget_device(check_device_id(device_id))
        return {"message": "Device deleted successfully", "device_id": device_id}


workers_blp = Blueprint("workers", __name__, url_prefix="/api", description="Celery workers")


@workers_blp.route("/workers")
class Workers(MethodView):
    @workers_blp.response(200, WorkersSchema)
    def get(self):
        """The Celery workers whose heartbeat holds a device's lease now (name: device-<id>@host).
        Read from Redis: no broadcast to the workers, so any number of callers costs nothing."""
        return {"workers": current_app.extensions["arceus"].store.devices.workers()}
