"""`VLAConfig`: the VLA as a LeRobot policy type (`--policy.type=vst_vla`).

LeRobot finds the rest by name: `vla.modeling_vla.VLAPolicy` and `vla.processor_vla.make_vst_vla_pre_post_processors`.
Importing this module registers the type (sim-eval imports it; `lerobot-train`/`lerobot-eval` need
`--policy.discover_packages_path=vla`).
"""

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from lerobot.configs import FeatureType, NormalizationMode, PreTrainedConfig
from lerobot.optim.optimizers import AdamWConfig
from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

POLICY_TYPE = "vst_vla"
ACTION_TOKENIZERS = ("bins", "fast")


@PreTrainedConfig.register_subclass(POLICY_TYPE)
@dataclass
class VLAConfig(PreTrainedConfig):
    # Backbone: a model preset (configs/models/), a checkpoint dir or hub id, or `baseline` / `vst`
    # (the VST pipeline's stages for `backbone_base`, found under `pipeline_dir`). Only read when a policy is
    # built fresh: a saved policy carries its backbone's config and tokenizer with it.
    backbone: str = "tiny"
    backbone_base: str = "tiny"
    pipeline_dir: str | None = None
    cache_dir: str | None = None  # where built presets are cached (default $VST_CACHE or ~/.cache/vst-vla)
    dtype: str = "float32"  # weights and autocast: float32 | bfloat16 (lerobot-train turns bf16 into AMP)
    # use_amp (LeRobot's field): bf16 autocast over float32 weights, the weights and optimiser state staying
    # fp32; on a CPU with native bf16 1.4-1.6x faster training steps (vst/cpu_amp.py: attention and the output
    # head stay fp32; decoding on the CPU stays fp32, where bf16 is slower). vla-train: amp=auto|true.
    seed: int = 0  # initial rows of the added action tokens

    # Actions: K-step chunks (K = 1 is the paper's VLA), each normalised with the dataset's q01/q99 by the
    # preprocessor, then one token per dimension and step ("bins") or DCT + BPE over the chunk ("fast").
    action_tokenizer: str = "bins"
    num_bins: int = 256
    fast_scale: float = 10.0
    fast_vocab_size: int = 1024
    fast_max_tokens: int = 128  # decoding budget of a FAST chunk (it ends with <|im_end|>)
    chunk_size: int = 8
    n_action_steps: int = 8  # actions of each chunk executed before the next call
    # > 0: predict a chunk every n_action_steps steps (ACT: every step, n_action_steps = 1) and execute the
    # weighted mean of every prediction made for this step, the oldest weighted most (w_i = exp(-coeff * i), ACT's
    # temporal ensembling): smoother, chunk_size / n_action_steps x the queue's calls. None: the action queue.
    temporal_ensemble_coeff: float | None = None
    # not a setting: tells sim-eval that this policy's ensembling may take a chunk every n_action_steps steps
    strided_temporal_ensemble: ClassVar[bool] = True
    # bins only: > 0 trains against a Gaussian of this std (in bins) around the target bin instead of a one-hot
    # (HL-Gauss, "classification as regression"): neighbouring bins share credit, so a diffuse dimension's
    # prediction stays near its centre instead of piling onto the clipped end bins that greedy decoding picks.
    bin_label_sigma: float = 0.0

    # Inputs: cameras observation.images.<name> in prompt order, each resized to image_size^2; the state as
    # fixed-precision text of its normalised values, or left out.
    cameras: list[str] = field(default_factory=lambda: ["agentview", "wrist"])
    image_size: int = 112
    use_state: bool = True
    state_decimals: int = 2
    max_length: int = 512  # prompt + action tokens

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.QUANTILES,
            "ACTION": NormalizationMode.QUANTILES,
        }
    )

    # Fine-tuning: which parts learn, LoRA on the LLM's linear layers (rank 0 = off). A frozen or LoRA-adapted
    # LLM still learns the rows of the added action tokens in its embedding.
    freeze_vision: bool = False
    freeze_merger: bool = False
    freeze_llm: bool = False
    gradient_checkpointing: bool = False  # recompute LLM activations in backward (memory for big backbones)
    lora_rank: int = 0
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    # Optimiser and schedule presets (lerobot-train's `use_policy_training_preset`).
    optimizer_lr: float = 1e-4  # LLM, merger and LoRA adapters
    optimizer_lr_vision: float = 2e-5  # vision tower
    optimizer_betas: tuple[float, float] = (0.9, 0.95)
    optimizer_eps: float = 1e-8
    optimizer_weight_decay: float = 0.0
    optimizer_grad_clip_norm: float = 1.0
    scheduler_warmup_steps: int = 100
    scheduler_decay_steps: int = 10_000
    scheduler_decay_lr: float = 1e-6

    push_to_hub: bool = False  # never reach for the hub unless asked

    def __post_init__(self):
        super().__post_init__()
        if self.action_tokenizer not in ACTION_TOKENIZERS:
            raise ValueError(
                f"action_tokenizer must be one of {ACTION_TOKENIZERS}, got {self.action_tokenizer!r}"
            )
        if self.bin_label_sigma < 0 or (self.bin_label_sigma and self.action_tokenizer != "bins"):
            raise ValueError(
                f"bin_label_sigma must be >= 0 and needs action_tokenizer='bins' (FAST tokens are not ordered), "
                f"got {self.bin_label_sigma} with {self.action_tokenizer!r}"
            )
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(
                f"n_action_steps ({self.n_action_steps}) must lie in 1..chunk_size ({self.chunk_size})"
            )
        if not self.cameras:
            raise ValueError("cameras is empty: the VLA needs at least one image")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras has duplicates: {self.cameras}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
        if self.lora_rank and self.freeze_llm:
            raise ValueError("lora_rank > 0 adapts the LLM; freeze_llm=true would contradict it")
        if not self.use_state:  # an unused input needs no stats (and must not fail for lack of them)
            self.normalization_mapping = {**self.normalization_mapping, "STATE": NormalizationMode.IDENTITY}

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def image_keys(self) -> list[str]:
        return [f"{OBS_IMAGES}.{cam}" for cam in self.cameras]

    def validate_features(self) -> None:
        """The dataset (or env) must provide the action, every configured camera and, if used, the state."""
        if not self.output_features or ACTION not in self.output_features:
            raise ValueError(
                f"the VLA predicts {ACTION!r}, which the output features lack: {self.output_features}"
            )
        if len(self.output_features[ACTION].shape) != 1:
            raise ValueError(f"{ACTION} must be a vector, got shape {self.output_features[ACTION].shape}")
        inputs = self.input_features or {}
        visual = sorted(k for k, ft in inputs.items() if ft.type is FeatureType.VISUAL)
        missing = [k for k in self.image_keys if k not in inputs]
        if missing:
            raise ValueError(
                f"cameras {missing} are not among the dataset's image features {visual}; "
                f"set policy cameras to a subset of {[k.removeprefix(OBS_IMAGES + '.') for k in visual]}"
            )
        if self.use_state and OBS_STATE not in inputs:
            raise ValueError(f"use_state=true but the features have no {OBS_STATE!r}; set use_state=false")

    @property
    def action_dim(self) -> int:
        return int(self.output_features[ACTION].shape[0])

    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(
            lr=self.optimizer_lr,
            betas=self.optimizer_betas,
            eps=self.optimizer_eps,
            weight_decay=self.optimizer_weight_decay,
            grad_clip_norm=self.optimizer_grad_clip_norm,
        )

    def get_scheduler_preset(self) -> CosineDecayWithWarmupSchedulerConfig:
        return CosineDecayWithWarmupSchedulerConfig(
            peak_lr=self.optimizer_lr,
            decay_lr=self.scheduler_decay_lr,
            num_warmup_steps=self.scheduler_warmup_steps,
            num_decay_steps=self.scheduler_decay_steps,
        )
