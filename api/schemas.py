"""Marshmallow schemas: request validation, response serialization and the OpenAPI document.

Limits and defaults come from ``arceus.config`` (``TRAIN_OPTIONS``, ``DatasetConfig``), the
one place they are written; ``JobConfig.parse`` checks the same rules again, and more.
"""

from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema
from werkzeug.routing import BaseConverter

from arceus.config import (
    DATASETS,
    MAX_BATCH,
    MAX_LAYER_SIZE,
    MAX_LAYERS,
    TRAIN_OPTIONS,
    DatasetConfig,
    Option,
)
from arceus.control.devices import LEASE_S
from arceus.plan.layers import KINDS

DEVICE_ID = r"^[0-9a-f]{6,32}$"


class DeviceIdConverter(BaseConverter):
    """``<device_id:...>`` in a route: hex digits only, so ``/api/devices/register`` is never read as
    a device id (the two routes would otherwise share methods in OPTIONS and Allow)."""

    regex = DEVICE_ID[1:-1]


def document(app, api) -> None:
    """What apispec leaves out of the document, added before the blueprints are registered: the
    device id converter, and exclusive bounds (``Range(min_inclusive=False)``) as OpenAPI 3.0's
    ``exclusiveMinimum`` / ``exclusiveMaximum``."""
    app.url_map.converters["device_id"] = DeviceIdConverter
    api.register_converter(DeviceIdConverter, lambda _converter: {"type": "string", "pattern": DEVICE_ID})

    def exclusive_bounds(self, field, **kwargs) -> dict:
        out = {}
        for v in field.validators:
            if isinstance(v, validate.Range):
                if v.min is not None and not v.min_inclusive:
                    out["exclusiveMinimum"] = True
                if v.max is not None and not v.max_inclusive:
                    out["exclusiveMaximum"] = True
        return out

    api.ma_plugin.converter.add_attribute_function(exclusive_bounds)


def document_model_config(api) -> None:
    """A model config has exactly one of its two forms: said in the document once it is built."""
    api.spec.components.schemas["ModelConfig"]["oneOf"] = [{"required": ["layer_sizes"]}, {"required": ["layers"]}]


__all__ = [
    "ClusterSchema",
    "SessionSchema",
    "DeviceRegisterSchema",
    "DeviceRegisteredSchema",
    "DeviceSchema",
    "DevicesSchema",
    "FeedQuerySchema",
    "HealthSchema",
    "InitializeSchema",
    "InitializedSchema",
    "JobCreateSchema",
    "JobCreatedSchema",
    "JobSchema",
    "JobsSchema",
    "JoinSchema",
    "ListQuerySchema",
    "ModelQuerySchema",
    "MessageSchema",
    "MetricsSchema",
    "TeraflopsSchema",
    "TrainSchema",
    "TrainStartedSchema",
    "WorkersSchema",
]


class _Strict(Schema):
    class Meta:
        unknown = RAISE


# ------------------------------------------------------------------ requests
class NormalizeSchema(_Strict):
    mean = fields.List(fields.Float(allow_nan=False), validate=validate.Length(1, 4))
    std = fields.List(fields.Float(validate=validate.Range(min=0, min_inclusive=False)), validate=validate.Length(1, 4))


class ModelConfigSchema(_Strict):
    """Exactly one of ``layers`` and ``layer_sizes``; each layer is checked in full, against the
    shape that reaches it, when the job is created (a 400 names the layer and the field)."""

    layer_sizes = fields.List(
        fields.Integer(strict=True, validate=validate.Range(1, MAX_LAYER_SIZE)),
        validate=validate.Length(2, MAX_LAYERS + 1),
        metadata={
            "description": "shorthand: widths of Linear layers with ReLU between them; "
            "layer i maps sizes[i] -> sizes[i+1]"
        },
    )
    layers = fields.List(
        fields.Dict(keys=fields.String()),
        validate=validate.Length(1, MAX_LAYERS),
        metadata={
            "description": 'layer objects, {"type": <torch.nn class in lower case>, <its arguments>}: '
            f"{', '.join(KINDS)}"
        },
    )

    @validates_schema
    def _one_of(self, data: dict, **kwargs: object) -> None:
        if ("layers" in data) == ("layer_sizes" in data):
            raise ValidationError("give exactly one of 'layers' or 'layer_sizes'")


class DatasetConfigSchema(_Strict):
    name = fields.String(validate=validate.OneOf(DATASETS), load_default=DatasetConfig.name)
    batch_size = fields.Integer(
        strict=True, validate=validate.Range(1, MAX_BATCH), load_default=DatasetConfig.batch_size
    )
    val_batch_size = fields.Integer(
        strict=True, validate=validate.Range(1, MAX_BATCH), load_default=DatasetConfig.val_batch_size
    )
    normalize = fields.Nested(NormalizeSchema)
    path = fields.String(
        allow_none=True,
        validate=validate.Length(1, 512),
        metadata={"description": "text: a file under ARCEUS_DATA_DIR (default: Python's own sources)"},
    )
    block_size = fields.Integer(
        strict=True, validate=validate.Range(1, 1 << 14), metadata={"description": "text: bytes a sample sees"}
    )
    val_fraction = fields.Float(
        validate=validate.Range(0, 0.5, min_inclusive=False),
        metadata={"description": "text: the last part of the file kept for validation"},
    )


class JobCreateSchema(_Strict):
    model_config = fields.Nested(ModelConfigSchema, required=True)
    dataset_config = fields.Nested(DatasetConfigSchema, load_default=dict)


def _option_field(o: Option) -> fields.Field:
    meta = {"description": o.help}
    if o.choices:
        return fields.String(validate=validate.OneOf(o.choices), load_default=o.default, metadata=meta)
    if o.type is tuple:
        item = fields.Float(validate=validate.Range(o.low, o.high))
        return fields.List(item, validate=validate.Length(2, 2), load_default=list(o.default), metadata=meta)
    if o.type is int:
        return fields.Integer(
            strict=True, validate=validate.Range(o.low, o.high), load_default=o.default, metadata=meta
        )
    rule = validate.Range(o.low, o.high, min_inclusive=not o.low_open)
    return fields.Float(validate=rule, load_default=o.default, metadata=meta)


TrainSchema = _Strict.from_dict({name: _option_field(o) for name, o in TRAIN_OPTIONS.items()}, name="TrainSchema")


class CheckpointRef(fields.Field):
    """A checkpoint: "latest", or the step it was saved at."""

    def _deserialize(self, value, attr, data, **kwargs):
        if value == "latest" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        if isinstance(value, str) and value.isdigit():  # from a query string
            return int(value)
        raise ValidationError('must be "latest" or a step number (an integer >= 0)')


def _checkpoint_field(description: str, **kw) -> CheckpointRef:
    # The OpenAPI document says what it takes: the string "latest" or an integer.
    meta = {"description": description, "oneOf": [{"type": "string", "enum": ["latest"]},
                                                  {"type": "integer", "minimum": 0}]}  # fmt: skip
    return CheckpointRef(metadata=meta, **kw)


class InitializeSchema(_Strict):
    seed = fields.Integer(
        strict=True,
        validate=validate.Range(TRAIN_OPTIONS["seed"].low, TRAIN_OPTIONS["seed"].high),
        load_default=TRAIN_OPTIONS["seed"].default,
        metadata={"description": "seeds every layer's initial weights"},
    )
    checkpoint = _checkpoint_field(
        "load this checkpoint of the job (its weights and optimizer state, split for the devices registered now) "
        "instead of initial weights; training continues from its step",
        load_default=None,
    )
    devices = fields.List(
        fields.String(validate=validate.Regexp(DEVICE_ID)),
        validate=validate.Length(1, 64),
        load_default=None,
        metadata={"description": "the devices to plan over, in stage order (default: the devices registered for the "
                  "job, else every live device no other job is using, as many as the plan can use)"},
    )  # fmt: skip


class ListQuerySchema(_Strict):
    offset = fields.Integer(validate=validate.Range(0, 1 << 31), load_default=0)
    limit = fields.Integer(validate=validate.Range(1, 500), load_default=50)


class SessionSchema(_Strict):
    token = fields.String(
        required=True, validate=validate.Length(1, 200), metadata={"description": "the cluster token"}
    )


class FeedQuerySchema(_Strict):
    after = fields.String(
        validate=validate.Length(0, 200), load_default=None,
        metadata={"description": "resume after this event id, as Last-Event-ID does (which wins)"},
    )  # fmt: skip


class ModelQuerySchema(_Strict):
    checkpoint = _checkpoint_field("which checkpoint", load_default="latest")


class DeviceRegisterSchema(_Strict):
    job_id = fields.String(
        validate=validate.Length(1, 64),
        metadata={"description": "a job to register the device for (the original flow); without it the device "
                  "joins the pool, and any job may plan over it"},
    )  # fmt: skip
    name = fields.String(
        validate=validate.Length(1, 128),
        metadata={"description": "unique among live devices; registering the name of a dead device takes its id back"},
    )
    # What the original Arceus clients sent, and what `arceus worker` reports about itself.
    ip = fields.String(validate=validate.Length(1, 64))
    port = fields.Integer(strict=True, validate=validate.Range(1, 65535))
    host = fields.String(validate=validate.Length(1, 256))
    platform = fields.String(validate=validate.Length(1, 256))
    torch = fields.String(validate=validate.Length(1, 64))
    torch_device = fields.String(validate=validate.Length(1, 64))
    memory_gb = fields.Float(validate=validate.Range(0, 1e6))
    accelerator = fields.String(validate=validate.Length(1, 256))
    accelerator_memory_gb = fields.Float(validate=validate.Range(0, 1e6))


# ------------------------------------------------------------------ responses
class MessageSchema(Schema):
    message = fields.String()
    job_id = fields.String()
    device_id = fields.String()


class HealthSchema(Schema):
    status = fields.String(metadata={"description": "ok, or unavailable"})
    redis = fields.String(metadata={"description": "ok, or why Redis does not answer"})


class ClusterSchema(Schema):
    version = fields.String()
    code = fields.String(metadata={"description": "the digest of the Arceus code the API runs; every worker must "
                                                  "run the same"})  # fmt: skip
    flower_url = fields.String(allow_none=True, metadata={"description": "Flower, where it runs beside the API"})
    token_required = fields.Boolean(metadata={"description": "whether requests need the cluster token"})


class JoinSchema(Schema):
    redis_url = fields.String(metadata={"description": "the broker and streams of the cluster, for its workers"})
    code = fields.String(metadata={"description": "the digest of the Arceus code the API runs: a worker that runs "
                                                  "other code does not join"})  # fmt: skip


class JobCreatedSchema(Schema):
    message = fields.String()
    job_id = fields.String()


class DeviceSchema(DeviceRegisterSchema):
    """A registered device: what its worker reported, and the queue it serves."""

    device_id = fields.String()
    queue = fields.String(metadata={"description": "the Celery queue its worker serves: device-<device_id>"})
    gflops = fields.Float(metadata={"description": "fp32 matmul GFLOP/s its worker measured as it started"})
    free_memory_gb = fields.Float(
        metadata={"description": "GiB free on its torch device (the machine's available memory for CPU and "
                                 "MPS) as its worker started; the plan keeps within it"})  # fmt: skip
    code = fields.String(
        metadata={"description": "the digest of the Arceus code its worker runs (GET /api/cluster has the API's): "
                                 "jobs are planned only on devices that run the API's code"})  # fmt: skip
    registered_at = fields.Float(metadata={"description": "Unix time"})
    alive = fields.Boolean(metadata={"description": f"its worker's heartbeat was heard within {LEASE_S:.0f}s"})
    worker = fields.String(allow_none=True, metadata={"description": "the Celery worker serving it (device-<id>@host)"})
    last_seen_s = fields.Float(allow_none=True, metadata={"description": "seconds since its last heartbeat"})


class DevicesSchema(Schema):
    devices = fields.List(fields.Nested(DeviceSchema))


class DeviceRegisteredSchema(Schema):
    message = fields.String()
    device_id = fields.String()
    queue = fields.String()
    worker_command = fields.String()


class WorkersSchema(Schema):
    workers = fields.List(
        fields.String(), metadata={"description": "device-<id>@host of each worker whose heartbeat holds a device"}
    )


class LinkPlanSchema(Schema):
    to_stage = fields.Integer(metadata={"description": "the stage it sends activations to, and hears gradients from"})
    wire = fields.String(metadata={"description": "fp32, fp16 or int8: what a run with wire auto sends on this link"})
    reason = fields.String(metadata={"description": "why, from what both ends measured at initialize"})
    ms = fields.Dict(
        keys=fields.String(), values=fields.Float(),
        metadata={"description": "estimated ms to move a batch's activations over and its gradients back, per wire"},
    )  # fmt: skip
    bytes = fields.Dict(keys=fields.String(), values=fields.Integer(),
                        metadata={"description": "bytes of a batch's activations on the wire, per wire"})  # fmt: skip


class StagePlanSchema(Schema):
    stage = fields.Integer()
    start_layer = fields.Integer(metadata={"description": "first layer held (inclusive)"})
    end_layer = fields.Integer(metadata={"description": "end of the layers held (exclusive)"})
    device_id = fields.String(allow_none=True)
    params = fields.Integer(metadata={"description": "parameters the stage holds"})
    flops = fields.Integer(metadata={"description": "estimated training FLOPs per sample (forward and backward)"})
    memory_bytes = fields.Integer(
        metadata={"description": "estimated memory: weights, gradients, optimizer state, a batch of activations"}
    )
    expected_ms = fields.Float(
        allow_none=True,
        metadata={
            "description": "compute ms a batch, from its layers' cost (measured, else FLOPs: the job's "
            "cost_model) and its device's measured GFLOP/s"
        },
    )
    link = fields.Nested(LinkPlanSchema, allow_none=True,
                         metadata={"description": "the link to the next stage (none for the last stage)"})  # fmt: skip


class ShardLoadedSchema(Schema):
    device_id = fields.String()
    stage = fields.Integer()
    start_layer = fields.Integer()
    end_layer = fields.Integer()
    parameters = fields.Integer()
    torch_device = fields.String()
    link = fields.Dict(metadata={"description": "what the worker measured: its leg to Redis (round trip, MB/s "
                                                "each way) and each wire's bytes, encode and decode ms"})  # fmt: skip


class InitializedSchema(Schema):
    message = fields.String()
    job_id = fields.String()
    plan = fields.List(fields.Nested(StagePlanSchema))
    devices = fields.List(fields.Nested(ShardLoadedSchema))
    step = fields.Integer(metadata={"description": "the step training continues from (0, or the checkpoint's)"})


class TrainStartedSchema(Schema):
    message = fields.String()
    job_id = fields.String()
    run_id = fields.String()
    epochs = fields.Integer()
    learning_rate = fields.Float()
    train_config = fields.Nested(TrainSchema)
    start_step = fields.Integer(metadata={"description": "the step of the data order the run starts at"})


class EpochSchema(Schema):
    """One finished epoch, as the last stage reported it."""

    type = fields.String()
    time = fields.Float(metadata={"description": "Unix time the event was written"})
    epoch = fields.Integer()
    epochs = fields.Integer()
    train_loss = fields.Float()
    train_accuracy = fields.Float()
    val_loss = fields.Float()
    val_accuracy = fields.Float()
    samples_per_s = fields.Float()
    seconds = fields.Float(metadata={"description": "training seconds of the epoch (evaluation excluded)"})
    samples = fields.Integer()
    tokens_per_s = fields.Float(metadata={"description": "text: bytes predicted per second"})
    val_bits_per_byte = fields.Float(metadata={"description": "text: val_loss in bits"})


class StageEpochSchema(Schema):
    """One stage's timings and bytes over one epoch."""

    type = fields.String()
    time = fields.Float()
    stage = fields.Integer()
    epoch = fields.Integer()
    compute_s = fields.Float()
    codec_s = fields.Float(metadata={"description": "encoding and decoding the wire payloads"})
    wait_s = fields.Float(metadata={"description": "waiting for a neighbour's message"})
    send_s = fields.Float()
    wall_s = fields.Float()
    cpu_s = fields.Float()
    utilization = fields.Float(metadata={"description": "(compute + codec) / wall"})
    bytes_raw = fields.Integer(metadata={"description": "what the tensors sent would take as fp32"})
    bytes_wire = fields.Integer(metadata={"description": "what was sent"})
    messages = fields.Integer()
    max_in_flight = fields.Integer(metadata={"description": "most micro-batches' activations held at once"})
    peak_saved_mb = fields.Float(metadata={"description": "most MiB autograd kept for backward at once"})
    peak_rss_mb = fields.Float()


class ProgressSchema(Schema):
    """The step the job is at, or (between epochs and once done) the last finished epoch."""

    epoch = fields.Integer()
    epochs = fields.Integer()
    step = fields.Integer()
    steps = fields.Integer()
    loss = fields.Float()
    accuracy = fields.Float()


class CheckpointSchema(Schema):
    step = fields.Integer(metadata={"description": "steps trained when it was saved"})
    epoch = fields.Integer(metadata={"description": "the epoch (from 0) training continues in from it"})
    batch = fields.Integer(metadata={"description": "the batch of that epoch training continues at"})
    metrics = fields.Nested(EpochSchema, metadata={"description": "the last finished epoch's metrics"})
    created_at = fields.Float()


class RecoverySchema(Schema):
    """A device lost mid-run, and how the job went on."""

    device_lost = fields.String()
    stage_lost = fields.Integer()
    cause = fields.String(metadata={"description": "why it counted as lost: its silence, or what its stage reported"})
    at_step = fields.Integer(metadata={"description": "the job's step when it was lost (the last one reported)"})
    resumed_from_step = fields.Integer(metadata={"description": "the step of the checkpoint loaded"})
    steps_redone = fields.Integer()
    seconds = fields.Float(metadata={"description": "from the loss being noticed to training again"})
    devices = fields.List(fields.String(), metadata={"description": "the devices it went on with, by stage"})


class JobSchema(Schema):
    job_id = fields.String()
    status = fields.String(
        metadata={"description": "created, initializing, ready, training, recovering, completed, failed or stopped"}
    )
    error = fields.String(allow_none=True, metadata={"description": "why the job failed or stopped"})
    model_config = fields.Nested(ModelConfigSchema)
    dataset_config = fields.Nested(DatasetConfigSchema)
    train_config = fields.Nested(
        TrainSchema, allow_none=True,
        metadata={"description": "the training it was last asked for (a recovery's run trains the epochs left of it)"},
    )  # fmt: skip
    devices = fields.List(fields.Nested(DeviceSchema))
    plan = fields.List(fields.Nested(StagePlanSchema), allow_none=True)
    cost_model = fields.String(
        allow_none=True,
        metadata={"description": "what the plan's split and expected_ms count: each unit's measured time, or its "
                  "FLOPs (and why)"},
    )  # fmt: skip
    run_id = fields.String(allow_none=True)
    created_at = fields.Float()
    updated_at = fields.Float()
    progress = fields.Nested(ProgressSchema)
    latest_metrics = fields.Nested(EpochSchema)
    final_metrics = fields.Nested(EpochSchema)
    step = fields.Integer(metadata={"description": "steps the job has trained (where its next run starts)"})
    checkpoints = fields.List(fields.Nested(CheckpointSchema), metadata={"description": "kept, oldest first"})
    recoveries = fields.List(fields.Nested(RecoverySchema), metadata={"description": "of the current training"})


class JobsSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema))
    total = fields.Integer(metadata={"description": "jobs in all (page with offset and limit)"})
    offset = fields.Integer()
    limit = fields.Integer()


class MetricsSchema(Schema):
    job_id = fields.String()
    run_id = fields.String(allow_none=True)
    status = fields.String()
    epochs = fields.List(fields.Nested(EpochSchema))
    stages = fields.List(fields.Nested(StageEpochSchema))
    recoveries = fields.List(fields.Nested(RecoverySchema))


class TeraflopsRowSchema(Schema):
    job_id = fields.String()
    run_id = fields.String()
    device_id = fields.String(allow_none=True)
    stage = fields.Integer()
    layers = fields.List(fields.Integer(), metadata={"description": "[start_layer, end_layer)"})
    flops = fields.Integer(metadata={"description": "training FLOPs of the stage's layers over the run"})
    compute_seconds = fields.Float()
    teraflops = fields.Float()


class TeraflopsSchema(Schema):
    teraflops = fields.List(fields.Nested(TeraflopsRowSchema))
