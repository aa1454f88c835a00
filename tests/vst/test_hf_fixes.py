import pytest
import torch
from huggingface_hub.dataclasses import _build_strict_cls_from_typed_dict
from huggingface_hub.errors import StrictDataclassFieldValidationError
from sft_rows import make_rows
from transformers import processing_utils

import vst.sft as S
from vst.backbone import build_backbone
from vst.hf_fixes import cache_processor_kwargs_validation


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return build_backbone("tiny", cache_dir=str(tmp_path_factory.mktemp("cache")))


def encode(backbone, rows):
    model, processor = backbone
    return [S.encode_row(r, processor, model.model.get_rope_index) for r in rows]


def test_processor_calls_reuse_one_validator_and_encode_the_same(backbone, monkeypatch):
    rows = make_rows(4)
    patched = processing_utils.validate_typed_dict
    assert hasattr(patched, "canonical_schemas")  # loading a backbone installs it
    monkeypatch.setattr(processing_utils, "validate_typed_dict", patched.__wrapped__)
    reference = encode(backbone, rows)  # transformers' own path
    monkeypatch.setattr(processing_utils, "validate_typed_dict", patched)
    encode(backbone, rows[:1])
    misses = _build_strict_cls_from_typed_dict.cache_info().misses
    fast = encode(backbone, rows)
    assert _build_strict_cls_from_typed_dict.cache_info().misses == misses  # nothing rebuilt per call
    for a, b in zip(reference, fast):
        assert a.keys() == b.keys()
        assert all(a[k] is None and b[k] is None or torch.equal(a[k], b[k]) for k in a)
    cache_processor_kwargs_validation()  # installing twice keeps the one wrapper
    assert processing_utils.validate_typed_dict is patched


def test_bad_processor_kwargs_still_fail(backbone):
    _, processor = backbone
    with pytest.raises(StrictDataclassFieldValidationError, match="do_resize"):
        processor(text=["hi"], images=None, do_resize="yes", return_tensors="pt")
