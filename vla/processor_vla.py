"""Pre/post processors of the VLA: the LeRobot default pipeline with q01/q99 (QUANTILES) normalisation.

The preprocessor maps the state and the action to [-1, 1] with the dataset's 1st/99th percentiles, so the action
tokenizer inside the policy bins already-normalised values; the postprocessor maps predicted actions back with
the same stats, saved in the checkpoint's `policy_postprocessor*` files (exact inverse, nothing re-read from
the dataset). LeRobot resolves the factory by name: `make_<policy type>_pre_post_processors`.
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lerobot.processor import PolicyAction, PolicyProcessorPipeline, make_default_pre_post_processors
from lerobot.utils.constants import ACTION, OBS_STATE, POLICY_POSTPROCESSOR_DEFAULT_NAME
from safetensors import safe_open

from vla.action_tokenizer import MissingStatsError, QuantileNormalizer
from vla.configuration_vla import VLAConfig

QUANTILE_KEYS = ("q01", "q99")


def check_stats(config: VLAConfig, stats: Mapping | None) -> None:
    """The dataset stats must hold q01/q99 of the action (and of the state if it is used), of the right size."""
    if not stats:
        raise MissingStatsError(
            "the VLA needs the dataset's stats (q01/q99 of the action) to build its processors; got none"
        )
    keys = [ACTION] + ([OBS_STATE] if config.use_state else [])
    for key in keys:
        normalizer = QuantileNormalizer.from_stats(
            stats, key
        )  # raises MissingStatsError naming what is missing
        feature = (config.output_features if key == ACTION else config.input_features)[key]
        if normalizer.dim != feature.shape[0]:
            raise ValueError(
                f"the stats of {key!r} have {normalizer.dim} dimensions but the policy's {key} has "
                f"{feature.shape[0]}: the dataset does not match the policy"
            )


def make_vla_pre_post_processors(
    config: VLAConfig, dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    check_stats(config, dataset_stats)
    return make_default_pre_post_processors(config, dataset_stats)


# The name LeRobot's factory looks up for policy type "vst_vla".
make_vst_vla_pre_post_processors = make_vla_pre_post_processors


def saved_action_stats(pretrained_dir: str | Path) -> dict[str, list[float]]:
    """q01/q99 of the action as saved in a checkpoint's postprocessor; raises MissingStatsError if absent."""
    pretrained_dir = Path(pretrained_dir)
    config_file = pretrained_dir / f"{POLICY_POSTPROCESSOR_DEFAULT_NAME}.json"
    if not config_file.is_file():
        raise MissingStatsError(
            f"{pretrained_dir} has no {config_file.name}: the checkpoint lacks its processors and with them "
            "the normalisation stats; it cannot turn predictions into actions"
        )
    steps = json.loads(config_file.read_text()).get("steps", [])
    state_files = [
        s["state_file"]
        for s in steps
        if s.get("registry_name") == "unnormalizer_processor" and s.get("state_file")
    ]
    found: dict[str, list[float]] = {}
    for name in state_files:
        path = pretrained_dir / name
        if not path.is_file():
            continue
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            for q in QUANTILE_KEYS:
                if f"{ACTION}.{q}" in names:
                    found[q] = f.get_tensor(f"{ACTION}.{q}").tolist()
    missing = [q for q in QUANTILE_KEYS if q not in found]
    if missing:
        raise MissingStatsError(
            f"{config_file} holds no {ACTION} {missing} stats: the checkpoint was saved without normalisation "
            "stats and cannot de-normalise its actions; re-export it with the processors of its training run"
        )
    return found
