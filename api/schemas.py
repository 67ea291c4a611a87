"""Marshmallow schemas: request validation, response serialization and the OpenAPI document.

Limits and defaults come from ``arceus.config`` (``TRAIN_OPTIONS``, ``DatasetConfig``), the
one place they are written; ``JobConfig.parse`` checks the same rules again, and more.
"""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from arceus.config import (
    DATASETS,
    MAX_BATCH,
    MAX_LAYER_SIZE,
    MAX_LAYERS,
    TRAIN_OPTIONS,
    DatasetConfig,
    Option,
)

__all__ = ["DeviceRegisterSchema", "InitializeSchema", "JobCreateSchema", "JobCreatedSchema", "TrainSchema"]


class _Strict(Schema):
    class Meta:
        unknown = RAISE


# ------------------------------------------------------------------ requests
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
    name = fields.String(validate=validate.OneOf(DATASETS), load_default=DatasetConfig.name)
    batch_size = fields.Integer(
        strict=True, validate=validate.Range(1, MAX_BATCH), load_default=DatasetConfig.batch_size
    )
    val_batch_size = fields.Integer(
        strict=True, validate=validate.Range(1, MAX_BATCH), load_default=DatasetConfig.val_batch_size
    )
    normalize = fields.Nested(NormalizeSchema)


class JobCreateSchema(_Strict):
    model_config = fields.Nested(ModelConfigSchema, required=True)
    dataset_config = fields.Nested(DatasetConfigSchema, load_default=dict)


def _option_field(o: Option) -> fields.Field:
    meta = {"description": o.help}
    if o.choices:
        return fields.String(validate=validate.OneOf(o.choices), load_default=o.default, metadata=meta)
    if o.type is int:
        return fields.Integer(
            strict=True, validate=validate.Range(o.low, o.high), load_default=o.default, metadata=meta
        )
    rule = validate.Range(o.low, o.high, min_inclusive=not o.low_open)
    return fields.Float(validate=rule, load_default=o.default, metadata=meta)


TrainSchema = _Strict.from_dict({name: _option_field(o) for name, o in TRAIN_OPTIONS.items()}, name="TrainSchema")


class InitializeSchema(_Strict):
    seed = fields.Integer(
        strict=True,
        validate=validate.Range(TRAIN_OPTIONS["seed"].low, TRAIN_OPTIONS["seed"].high),
        load_default=0,
        metadata={"description": "seeds every layer's initial weights"},
    )


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


# ------------------------------------------------------------------ responses
class JobCreatedSchema(Schema):
    message = fields.String()
    job_id = fields.String()
