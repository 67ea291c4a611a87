"""Devices: register (one queue per device), list, unregister; the Celery workers answering."""

from __future__ import annotations

from flask import current_app
from flask.views import MethodView

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
    @blp.arguments(DeviceRegisterSchema)
    @blp.response(201, DeviceRegisteredSchema)
    def post(self, body):
        """Register a device for a job; its worker must listen on the returned queue."""
        store = current_app.extensions["arceus"].store
        job_id = body.pop("job_id")
        device_id = store.register_device(job_id, body)
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
        """All registered devices."""
        return {"devices": current_app.extensions["arceus"].store.devices()}


@blp.route("/<int:device_id>")
class Device(MethodView):
    @blp.response(200, DeviceSchema)
    def get(self, device_id):
        """One device: what its worker reported, and its queue."""
        return current_app.extensions["arceus"].store.get_device(device_id)

    @blp.response(200, MessageSchema)
    def delete(self, device_id):
        """Unregister a device (not while its job initializes or trains)."""
        current_app.extensions["arceus"].store.delete_device(device_id)
        return {"message": "Device deleted successfully", "device_id": device_id}


workers_blp = Blueprint("workers", __name__, url_prefix="/api", description="Celery workers")


@workers_blp.route("/workers")
class Workers(MethodView):
    @workers_blp.response(200, WorkersSchema)
    def get(self):
        """The Celery workers that answer a ping now (name: device-N@host)."""
        replies = current_app.extensions["arceus"].celery.control.ping(timeout=1.0) or []
        return {"workers": sorted(name for reply in replies for name in reply)}
