"""The network lifecycle of a job: initialize (load shards), train, stop."""

from __future__ import annotations

from flask import current_app
from flask.views import MethodView

from arceus.config import TrainConfig

from .errors import Blueprint
from .schemas import InitializedSchema, InitializeSchema, MessageSchema, TrainSchema, TrainStartedSchema

blp = Blueprint("network", __name__, url_prefix="/api/network", description="Initialize, train and stop a job")


@blp.route("/initialize/<job_id>")
class Initialize(MethodView):
    @blp.arguments(InitializeSchema, required=False)
    @blp.response(200, InitializedSchema)
    def post(self, body, job_id):
        """Partition the layers over devices (``devices``; default: those registered for the job, else
        every free live device); every device's worker loads its shard: new weights from ``seed``, or
        a checkpoint of the job (``{"checkpoint": "latest"}`` or a step)."""
        body = body or InitializeSchema().load({})
        result = current_app.extensions["arceus"].initialize(
            job_id, seed=body["seed"], checkpoint=body["checkpoint"], devices=body["devices"]
        )
        return {"message": "Network initialized successfully", "job_id": job_id, **result}


@blp.route("/train/<job_id>")
class Train(MethodView):
    @blp.arguments(TrainSchema, required=False)
    @blp.response(200, TrainStartedSchema)
    def post(self, body, job_id):
        """Start training on the initialized devices; returns at once (follow GET /api/jobs/<job_id>)."""
        train = TrainConfig.parse(body or {})
        result = current_app.extensions["arceus"].train(job_id, train)
        return {"message": "Training started", "epochs": train.epochs, "learning_rate": train.learning_rate,
                "job_id": job_id, **result, "train_config": train.to_dict()}  # fmt: skip


@blp.route("/stop/<job_id>")
class Stop(MethodView):
    @blp.response(200, MessageSchema)
    def post(self, job_id):
        """Stop a training job; every stage stops within a few seconds."""
        current_app.extensions["arceus"].stop(job_id)
        return {"message": "Training stopped", "job_id": job_id}
