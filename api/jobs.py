"""Jobs: create, list, show (status, devices, progress, latest metrics), delete; metrics."""

from __future__ import annotations

from flask import Response, current_app
from flask.views import MethodView

from arceus.config import JobConfig
from arceus.errors import ConfigError
from arceus.plan.partition import units

from .errors import Blueprint
from .schemas import (
    JobCreatedSchema,
    JobCreateSchema,
    JobSchema,
    JobsSchema,
    ListQuerySchema,
    MessageSchema,
    MetricsSchema,
    ModelQuerySchema,
    TeraflopsSchema,
)

blp = Blueprint("jobs", __name__, url_prefix="/api", description="Training jobs")


def _control():
    return current_app.extensions["arceus"]


def _public(job: dict, control) -> dict:
    out = {
        "job_id": job["job_id"],
        "status": job["status"],
        "error": job.get("error") or None,
        "model_config": job["config"]["model_config"],
        "dataset_config": job["config"]["dataset_config"],
        "train_config": job.get("train_config") or None,
        "devices": job["devices"],
        "plan": job.get("plan") or None,
        "cost_model": job.get("cost_model") or None,
        "run_id": job.get("run_id") or None,
        "created_at": job["created_at"],
        "updated_at": job["updated_at"],
    }
    out.update(control.progress(job))
    if job.get("final"):
        out["final_metrics"] = job["final"]
    out["step"] = job.get("step") or 0
    out["recoveries"] = job.get("recoveries") or []
    out["checkpoints"] = control.checkpoints.summaries(job["job_id"])
    return out


def _check_messages(config: JobConfig, max_elements: int) -> None:
    """Refuse at once a job no split over two or more devices could train: a batch of activations
    exceeds a payload even where a plan can cut the model most narrowly (every stage applies the
    rule to its own cut, ``RunSpec.check_message_sizes``; a one-device plan sends nothing)."""
    rows = max(config.dataset.batch_size, config.dataset.val_batch_size)
    cuts = [config.layers[end - 1].output.numel for _start, end in units(config.layers)[:-1]]  # where plans cut
    if cuts and rows * min(cuts) > max_elements:
        width = min(cuts)
        raise ConfigError(
            "dataset_config.batch_size", f"a batch of {rows} rows x {width} values per sample (the narrowest place "
            f"a plan can cut the model) = {rows * width} values exceeds the payload limit of {max_elements}; "
            "use smaller batches"
        )  # fmt: skip


@blp.route("/jobs")
class Jobs(MethodView):
    @blp.arguments(JobCreateSchema)
    @blp.response(201, JobCreatedSchema)
    def post(self, body):
        """Create a job from a model and dataset config (the original Arceus body)."""
        config = JobConfig.parse(body)  # the semantic checks beyond the schema
        settings = current_app.config["ARCEUS_SETTINGS"]
        params = sum(layer.params for layer in config.layers)
        if params > settings.max_params:
            raise ConfigError(
                "model_config", f"has {params:,} parameters, more than this cluster's cap of {settings.max_params:,} "
                "(ARCEUS_MAX_PARAMS on the API's machine)"
            )  # fmt: skip
        _check_messages(config, settings.max_payload_elements)
        job_id = _control().store.create(config)
        return {"message": "Job created successfully", "job_id": job_id}

    @blp.arguments(ListQuerySchema, location="query")
    @blp.response(200, JobsSchema)
    def get(self, query):
        """Jobs, oldest first, a page at a time (``offset``, ``limit``; ``total`` counts them all)."""
        control = _control()
        total, jobs = control.store.list(query["offset"], query["limit"])
        return {"jobs": [_public(control.reap(j), control) for j in jobs], "total": total, **query}


@blp.route("/jobs/<job_id>")
class Job(MethodView):
    @blp.response(200, JobSchema)
    def get(self, job_id):
        """Status, devices, configs, progress (epoch/step), latest metrics and error reason."""
        control = _control()
        return _public(control.job(job_id), control)

    @blp.response(200, MessageSchema)
    def delete(self, job_id):
        """Delete a job that is not initializing or training (and unregister its devices)."""
        _control().delete(job_id)
        return {"message": "Job deleted successfully", "job_id": job_id}


@blp.route("/jobs/<job_id>/metrics")
class Metrics(MethodView):
    @blp.response(200, MetricsSchema)
    def get(self, job_id):
        """Per-epoch history and per-stage timings (compute, wait, send, bytes) of the job's last run."""
        return _control().metrics(job_id)


@blp.route("/jobs/<job_id>/model")
class Model(MethodView):
    @blp.arguments(ModelQuerySchema, location="query")
    @blp.doc(responses={"200": {"description": "the whole model as one safetensors file: its metadata holds "
                                "model_config, sample_shape, step and metrics (load it with arceus.load_model)",
                                "content": {"application/octet-stream": {}}}})  # fmt: skip
    def get(self, query, job_id):
        """The model of one of the job's checkpoints (default the latest), as one .safetensors file."""
        control = _control()
        control.store.get(job_id)  # 404 for an unknown job before anything else
        manifest, combined = control.checkpoints.model(job_id, query["checkpoint"])
        name = f"{job_id}-step{manifest['step']}.safetensors"
        return Response(
            combined.chunks(),
            mimetype="application/octet-stream",
            headers={"Content-Length": str(combined.size), "Content-Disposition": f'attachment; filename="{name}"'},
        )


@blp.route("/previous_teraflops")
class Teraflops(MethodView):
    @blp.response(200, TeraflopsSchema)
    def get(self):
        """Per-device achieved TFLOP/s of finished runs: the layers' real training FLOPs / compute seconds."""
        return {"teraflops": _control().store.teraflops()}
