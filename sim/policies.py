"""What `sim-eval policy=...` can run: the scripted expert, a random policy, or any LeRobot checkpoint.

All three look the same to the evaluator: `reset()`, `select_action(batch) -> (B, 7) tensor`, with pre/post
processors around them, exactly how `lerobot-eval` drives a policy.
"""

import importlib
import logging
from pathlib import Path

import numpy as np
import torch

from sim.env import ACTION_DIM

log = logging.getLogger(__name__)

# Modules that register third-party LeRobot policy types, imported before reading a checkpoint's config.
POLICY_PLUGINS = ("vla.configuration_vla",)


class ExpertPolicy:
    """Executes the scripted expert's action, which the env computes from privileged state (`expert=True`)."""

    needs_expert = True

    def reset(self) -> None:
        pass

    def select_action(self, batch: dict) -> torch.Tensor:
        if "observation.expert_action" not in batch:
            raise KeyError("the expert policy needs envs made with expert=True (observation.expert_action)")
        return batch["observation.expert_action"]


class RandomPolicy:
    """Uniform actions in the Box: the floor every learned policy must clear."""

    needs_expert = False

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def select_action(self, batch: dict) -> torch.Tensor:
        n = len(batch["task"])
        return torch.from_numpy(self.rng.uniform(-1.0, 1.0, (n, ACTION_DIM)).astype(np.float32))


def _identity(x):
    return x


def check_policy_spec(spec: str) -> None:
    """Fail early, by name, on a policy that is neither built in nor a LeRobot checkpoint dir."""
    path = Path(spec)
    if spec not in ("expert", "random") and not (path / "config.json").exists():
        raise FileNotFoundError(
            f"policy={spec!r} is neither 'expert', 'random' nor a LeRobot checkpoint dir (no {path / 'config.json'})"
        )


def load_policy(
    spec: str,
    device: str = "cpu",
    seed: int = 0,
    n_action_steps: int | None = None,
    temporal_ensemble: float | None = None,
):
    """'expert' | 'random' | path to a LeRobot `pretrained_model` dir -> (policy, preprocessor, postprocessor).

    `n_action_steps` executes only the first N actions of each predicted chunk before predicting again
    (receding horizon): more reactive, N times the calls; the checkpoint's own value when None.
    `temporal_ensemble` (a coefficient) predicts at every step and executes the weighted mean of all predictions
    for that step (ACT's temporal ensembling; the VLA and ACT both have it); with `n_action_steps` N as well, the
    VLA predicts every N steps and mixes the overlapping chunks (N times fewer calls)."""
    if spec == "expert":
        return ExpertPolicy(), _identity, _identity
    if spec == "random":
        return RandomPolicy(seed), _identity, _identity
    check_policy_spec(spec)
    path = Path(spec)
    for mod in POLICY_PLUGINS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    cfg = PreTrainedConfig.from_pretrained(path)
    cfg.device = device
    if n_action_steps is not None:
        chunk = getattr(cfg, "chunk_size", None)
        if not hasattr(cfg, "n_action_steps") or chunk is None:
            raise ValueError(
                f"n_action_steps={n_action_steps}: the {cfg.type} policy does not predict chunks"
            )
        if not 1 <= n_action_steps <= chunk:
            raise ValueError(f"n_action_steps={n_action_steps} must lie in 1..chunk_size ({chunk}) of {path}")
        cfg.n_action_steps = n_action_steps
    if temporal_ensemble is not None:
        if not hasattr(cfg, "temporal_ensemble_coeff"):
            raise ValueError(
                f"temporal_ensemble={temporal_ensemble}: the {cfg.type} policy has no temporal ensembling"
            )
        if n_action_steps not in (None, 1) and not getattr(cfg, "strided_temporal_ensemble", False):
            raise ValueError(
                f"temporal_ensemble with n_action_steps={n_action_steps}: the {cfg.type} policy's ensembling "
                "predicts at every step (1 or unset); a chunk every N steps is the vst_vla policy's"
            )
        cfg.temporal_ensemble_coeff, cfg.n_action_steps = float(temporal_ensemble), n_action_steps or 1
    policy = get_policy_class(cfg.type).from_pretrained(path, config=cfg)
    policy.to(device).eval()
    pre, post = make_pre_post_processors(
        cfg, pretrained_path=str(path), preprocessor_overrides={"device_processor": {"device": device}}
    )
    policy.needs_expert = False
    log.info("loaded %s policy from %s", cfg.type, path)
    return policy, pre, post
