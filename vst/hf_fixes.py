"""Backports of upstream fixes that the pinned libraries lack (lerobot 0.6.1 pins transformers < 5.6). Each is
behaviour-preserving, safe to install twice, and names the upstream change that makes it unnecessary."""

import functools


def cache_processor_kwargs_validation() -> None:
    """Processors validate their keyword arguments against a TypedDict that transformers 5.5 builds anew on every
    call, so huggingface_hub's lru-cached validator never hits its cache and compiles two dataclasses per call:
    ~4 ms, half the time of encoding one SFT row on a CPU (and of every GRPO batch's processor call). Hand it one
    canonical TypedDict per set of annotations instead. Upstream: huggingface/transformers#45807."""
    from transformers import processing_utils

    validate = processing_utils.validate_typed_dict
    if hasattr(validate, "canonical_schemas"):
        return
    canonical = {}

    @functools.wraps(validate)
    def validate_canonical(schema, data):
        try:
            key = (schema.__name__, getattr(schema, "__total__", True), tuple(schema.__annotations__.items()))
            schema = canonical.setdefault(key, schema)
        except TypeError:  # an unhashable annotation: validate as before, uncached
            pass
        return validate(schema, data)

    validate_canonical.canonical_schemas = canonical
    processing_utils.validate_typed_dict = validate_canonical
