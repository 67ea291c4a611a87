"""Marshmallow schemas: request validation, response shapes and the OpenAPI document."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from arceus.config import DATASETS, MAX_BATCH, MAX_LAYER_SIZE, MAX_LAYERS, SCHEDULES, WIRE_CODECS

__all__ = [
    "DeviceRegisterSchema",
    "JobCreateSchema",
    "TrainSchema",
]


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class NormalizeSchema(_Strict):
    mean = fields.List(fields.Float(allow_nan=False), validate=validate.Length(1, 4))
    std = fields.List(fields.Float(validate=validate.Range(min=0, min_inclusive=False)), validate=validate.Length(1, 4))


class ModelConfigSchema(_Strict):
    layer_sizes = fields.List(
        fields.Integer(strict=True, validate=validate.Range(1, MAX_LAYER_SIZE)),
        required=True,
        validate=validate.Length(2, MAX_LAYERS + 1),
        metadata={"description": "widths of the activations; layer i maps sizes[i] -> sizes[i+1]"},
    )


class DatasetConfigSchema(_Strict):
    name = fields.String(validate=validate.OneOf(DATASETS), load_default="MNIST")
    batch_size = fields.Integer(strict=True, validate=validate.Range(1, MAX_BATCH), load_default=256)
    val_batch_size = fields.Integer(strict=True, validate=validate.Range(1, MAX_BATCH), load_default=1000)
    normalize = fields.Nested(NormalizeSchema)


class JobCreateSchema(_Strict):
    model_config = fields.Nested(ModelConfigSchema, required=True)
    dataset_config = fields.Nested(DatasetConfigSchema, load_default=dict)


class JobCreatedSchema(Schema):
    message = fields.String()
    job_id = fields.String()


class TrainSchema(_Strict):
    epochs = fields.Integer(strict=True, validate=validate.Range(1, 10_000), load_default=10)
    learning_rate = fields.Float(validate=validate.Range(0, 100, min_inclusive=False), load_default=0.1)
    momentum = fields.Float(validate=validate.Range(0, 0.999), load_default=0.0)
    micro_batches = fields.Integer(strict=True, validate=validate.Range(1, 1024), load_default=1)
    wire = fields.String(validate=validate.OneOf(list(WIRE_CODECS)), load_default="int8")
    schedule = fields.String(validate=validate.OneOf(SCHEDULES), load_default="gpipe")
    seed = fields.Integer(strict=True, validate=validate.Range(0, 2**31 - 1), load_default=0)


class DeviceRegisterSchema(_Strict):
    job_id = fields.String(required=True, validate=validate.Length(1, 64))
    name = fields.String(validate=validate.Length(1, 128))
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
