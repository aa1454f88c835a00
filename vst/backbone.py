"""Backbones: model presets, one loading path for presets and real checkpoints, and `backbone=baseline|vst`.

A preset (configs/models/NAME.yaml) either names a real checkpoint (`path:` a hub id or directory) or describes a
Qwen2.5-VL architecture (`arch:`) that is built from random weights with the shipped tokenizer, saved once into a
cache directory and from then on loaded by path like any checkpoint. So every caller, and every test, goes through
`AutoModelForImageTextToText` / `AutoProcessor.from_pretrained`, the same calls a real 3B model takes.
The presets live in configs/models/ and configs/backbones/, not configs/model/: a config group named `model`
(or `backbone`) would make Hydra read `model=PATH` on every command line as a group choice and reject paths.
"""

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLConfig

from vst import tokenizer as tiny_tok
from vst.hf_fixes import cache_processor_kwargs_validation

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
MODEL_CONFIGS = CONFIG_DIR / "models"
BACKBONE_CONFIGS = CONFIG_DIR / "backbones"
# The pipeline's stages in order; each writes its checkpoint to <pipeline_dir>/<stage>/model.
PIPELINE_STAGES = ("pretrain", "sft", "cot", "rl")
FINAL_MODEL_DIR = "model"


@dataclass
class ArchConfig:
    """A Qwen2.5-VL architecture to build from scratch (text decoder + vision tower + merger)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    mrope_section: list[int]
    vision_depth: int
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_num_heads: int
    vision_fullatt_block_indexes: list[int] = field(default_factory=list)
    vision_window_size: int = 112
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    vocab_size: int | None = None  # None: the tokenizer's size rounded up to a multiple of 64
    max_position_embeddings: int = 4096
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = True
    tokenizer_file: str | None = None  # None: the shipped vst/assets/tiny_tokenizer.json

    def __post_init__(self):
        head_dim, rem = divmod(self.hidden_size, self.num_attention_heads)
        if rem:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"{self.num_attention_heads} attention heads do not split into {self.num_key_value_heads} kv groups"
            )
        if len(self.mrope_section) != 3 or sum(self.mrope_section) != head_dim // 2:
            raise ValueError(
                f"mrope_section {list(self.mrope_section)} must be 3 numbers summing to head_dim/2 = {head_dim // 2}"
            )
        if self.vision_hidden_size % self.vision_num_heads:
            raise ValueError(
                f"vision_hidden_size {self.vision_hidden_size} not divisible by {self.vision_num_heads} heads"
            )
        bad = [i for i in self.vision_fullatt_block_indexes if not 0 <= i < self.vision_depth]
        if bad:
            raise ValueError(
                f"vision_fullatt_block_indexes {bad} are outside the {self.vision_depth} vision blocks"
            )


@dataclass
class ModelConfig:
    """One configs/models/*.yaml: a real checkpoint (`path`) or an architecture to build (`arch`)."""

    name: str
    path: str | None = None
    arch: ArchConfig | None = None
    min_pixels: int | None = None  # image resize bounds; None keeps the checkpoint's own
    max_pixels: int | None = None

    def __post_init__(self):
        if (self.path is None) == (self.arch is None):
            raise ValueError(f"model preset {self.name!r} needs exactly one of `path` and `arch`")
        if self.arch is not None and (self.min_pixels is None or self.max_pixels is None):
            raise ValueError(
                f"model preset {self.name!r} builds a processor and needs min_pixels and max_pixels"
            )


def preset_names() -> list[str]:
    return sorted(p.stem for p in MODEL_CONFIGS.glob("*.yaml"))


def is_preset(name: str) -> bool:
    """Bare names in configs/models/ are presets, unless a directory of that name sits in the working dir."""
    return "/" not in name and not Path(name).is_dir() and (MODEL_CONFIGS / f"{name}.yaml").is_file()


def is_built_preset(name: str) -> bool:
    """Presets built from random weights (`arch:`), which need general pretraining before they can see and talk."""
    return is_preset(name) and load_model_config(name).arch is not None


def load_model_config(name: str) -> ModelConfig:
    """Read configs/models/NAME.yaml into its dataclass (validated)."""
    file = MODEL_CONFIGS / f"{name}.yaml"
    if not file.is_file():
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(preset_names())}")
    raw = OmegaConf.to_container(OmegaConf.load(file), resolve=True)
    arch = raw.pop("arch", None)
    try:
        return ModelConfig(**raw, arch=ArchConfig(**arch) if arch is not None else None)
    except TypeError as e:  # an unknown or missing key
        raise ValueError(f"bad model preset {file}: {e}") from e


# ---------------------------------------------------------------------------------------------- building


def build_from_config(cfg: ModelConfig, seed: int = 0):
    """Random-weight model and processor for an `arch` preset, in memory (deterministic for a seed)."""
    arch = cfg.arch
    tok = tiny_tok.load_tokenizer(arch.tokenizer_file or tiny_tok.TOKENIZER_FILE)
    processor = tiny_tok.build_processor(
        tok,
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
        patch_size=arch.patch_size,
        merge_size=arch.spatial_merge_size,
        temporal_patch_size=arch.temporal_patch_size,
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in tiny_tok.SPECIAL_TOKENS}
    vocab_size = arch.vocab_size or -(-len(tok) // 64) * 64
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=arch.hidden_size,
            intermediate_size=arch.intermediate_size,
            num_hidden_layers=arch.num_hidden_layers,
            num_attention_heads=arch.num_attention_heads,
            num_key_value_heads=arch.num_key_value_heads,
            max_position_embeddings=arch.max_position_embeddings,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": arch.rope_theta,
                "mrope_section": list(arch.mrope_section),
            },
            bos_token_id=None,
            eos_token_id=ids[tiny_tok.IM_END],
            pad_token_id=ids[tiny_tok.PAD],
            tie_word_embeddings=arch.tie_word_embeddings,
        ),
        vision_config=dict(
            depth=arch.vision_depth,
            hidden_size=arch.vision_hidden_size,
            intermediate_size=arch.vision_intermediate_size,
            num_heads=arch.vision_num_heads,
            out_hidden_size=arch.hidden_size,
            patch_size=arch.patch_size,
            spatial_merge_size=arch.spatial_merge_size,
            temporal_patch_size=arch.temporal_patch_size,
            window_size=arch.vision_window_size,
            fullatt_block_indexes=list(arch.vision_fullatt_block_indexes),
            tokens_per_second=2,
        ),
        image_token_id=ids[tiny_tok.IMAGE_PAD],
        video_token_id=ids[tiny_tok.VIDEO_PAD],
        vision_start_token_id=ids[tiny_tok.VISION_START],
        vision_end_token_id=ids[tiny_tok.VISION_END],
        tie_word_embeddings=arch.tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = [ids[tiny_tok.IM_END], ids[tiny_tok.PAD]]
    model.generation_config.pad_token_id = ids[tiny_tok.PAD]
    return model, processor


def _preset_key(cfg: ModelConfig, seed: int) -> str:
    """Cache key: the preset's content, the tokenizer's bytes and the seed (a changed preset is rebuilt)."""
    tok_file = Path(cfg.arch.tokenizer_file or tiny_tok.TOKENIZER_FILE)
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    h.update(tok_file.read_bytes())
    h.update(tiny_tok.CHAT_TEMPLATE_FILE.read_bytes())
    return f"{cfg.name}-seed{seed}-{h.hexdigest()[:12]}"


def default_cache_dir() -> Path:
    return Path(os.environ.get("VST_CACHE", Path.home() / ".cache" / "vst-vla")) / "backbones"


def preset_checkpoint(name: str, *, cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """The saved checkpoint of an `arch` preset, built on first use (safe when several processes race)."""
    cfg = load_model_config(name)
    if cfg.arch is None:
        raise ValueError(f"preset {name!r} is the checkpoint {cfg.path}, nothing to build")
    target = Path(cache_dir or default_cache_dir()) / _preset_key(cfg, seed)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    model, processor = build_from_config(cfg, seed)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built preset %s (%.2fM parameters) into %s", name, model.num_parameters() / 1e6, target)
    return target


def checkpoint_path(preset_or_path: str, *, cache_dir: str | Path | None = None, seed: int = 0) -> str:
    """A loadable path or hub id for a preset name, a local checkpoint directory or a hub id."""
    if is_preset(preset_or_path):
        cfg = load_model_config(preset_or_path)
        return (
            cfg.path
            if cfg.path is not None
            else str(preset_checkpoint(preset_or_path, cache_dir=cache_dir, seed=seed))
        )
    if Path(preset_or_path).is_dir():
        if not (Path(preset_or_path) / "config.json").is_file():
            raise FileNotFoundError(
                f"{preset_or_path} is a directory without config.json: not a saved checkpoint"
            )
        return preset_or_path
    if preset_or_path.count("/") == 1 and not preset_or_path.startswith((".", "/", "~")):
        return preset_or_path  # a hub id
    raise ValueError(
        f"{preset_or_path!r} is neither a model preset ({', '.join(preset_names())}), a checkpoint directory, "
        f"nor a hub id"
    )


# ---------------------------------------------------------------------------------------------- loading


def _as_dtype(dtype) -> torch.dtype | str:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r} (use e.g. float32, bfloat16, auto)")
    return getattr(torch, dtype)


def check_compatible(model, processor) -> None:
    """Raise if the processor would feed the model ids or image grids it does not expect."""
    cfg, tok = model.config, processor.tokenizer
    problems = []
    vocab = cfg.get_text_config().vocab_size
    if len(tok) > vocab:
        problems.append(
            f"the tokenizer has {len(tok)} tokens but the model's embedding has only {vocab} rows"
        )
    for what, model_id, proc_id in [
        ("image token", cfg.image_token_id, processor.image_token_id),
        ("video token", cfg.video_token_id, processor.video_token_id),
        ("vision start token", cfg.vision_start_token_id, tok.convert_tokens_to_ids(tiny_tok.VISION_START)),
    ]:
        if model_id != proc_id:
            problems.append(f"{what}: model expects id {model_id}, processor gives {proc_id}")
    vis, img = cfg.vision_config, processor.image_processor
    for what, m, p in [
        ("patch size", vis.patch_size, img.patch_size),
        ("spatial merge size", vis.spatial_merge_size, img.merge_size),
        ("temporal patch size", vis.temporal_patch_size, img.temporal_patch_size),
    ]:
        if m != p:
            problems.append(f"{what}: model {m}, image processor {p}")
    if problems:
        raise ValueError("model and processor do not match: " + "; ".join(problems))


def load_backbone(
    path: str, *, dtype=None, device=None, min_pixels: int | None = None, max_pixels: int | None = None
):
    """Load (model, processor) from a checkpoint directory or hub id, checked against each other."""
    if (min_pixels is None) != (max_pixels is None):
        raise ValueError("set both min_pixels and max_pixels, or neither")
    pixels = {} if min_pixels is None else dict(min_pixels=min_pixels, max_pixels=max_pixels)
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=_as_dtype(dtype))
        processor = AutoProcessor.from_pretrained(path, **pixels)
    except OSError as e:
        raise FileNotFoundError(
            f"cannot load backbone {path!r}: {e}\n(hub ids need the weights in the local HF cache, "
            f"or HF_HUB_OFFLINE=0 on a machine with internet)"
        ) from e
    check_compatible(model, processor)
    cache_processor_kwargs_validation()  # every processor call ~4 ms faster (vst/hf_fixes.py)
    if device is not None:
        model.to(device)
    return model, processor


def build_backbone(preset_or_path: str, *, cache_dir=None, seed=0, dtype=None, device=None):
    """(model, processor) for a preset name (`tiny`, `small`, `qwen2_5_vl_3b`, ...), a checkpoint directory or a
    hub id. Built presets are cached under `cache_dir` (default $VST_CACHE or ~/.cache/vst-vla) by content."""
    path = checkpoint_path(preset_or_path, cache_dir=cache_dir, seed=seed)
    pixels = {}
    if is_preset(preset_or_path):
        cfg = load_model_config(preset_or_path)
        if cfg.path is not None and cfg.min_pixels is not None:
            pixels = dict(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    return load_backbone(path, dtype=dtype, device=device, **pixels)


def save_backbone(model, processor, path: str | Path) -> Path:
    """Write a checkpoint that AutoModelForImageTextToText/AutoProcessor reload. The new copy is written beside
    the old one and swapped in at the end, so an interrupted save never destroys the previous checkpoint."""
    check_compatible(model, processor)
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


# ---------------------------------------------------------------------------------------------- aliases


@dataclass
class BackboneAlias:
    """configs/backbones/NAME.yaml: which pipeline stage's checkpoint a backbone name stands for."""

    stage: str

    def __post_init__(self):
        if self.stage not in PIPELINE_STAGES:
            raise ValueError(f"backbone alias stage {self.stage!r} is not one of {PIPELINE_STAGES}")


def alias_names() -> list[str]:
    return sorted(p.stem for p in BACKBONE_CONFIGS.glob("*.yaml"))


def default_pipeline_dir(model: str) -> Path:
    """Where the pipeline for a base model writes its stages: outputs/vst/<preset or checkpoint name>."""
    return Path("outputs") / "vst" / Path(model.rstrip("/")).name


def stage_command(stage: str, model: str, pipeline_dir: str | Path) -> str:
    """The `vst-train` command that produces <pipeline_dir>/<stage>/model."""
    stages = [s for s in PIPELINE_STAGES if s != "pretrain" or is_built_preset(model)]
    i = stages.index(stage)
    init = model if i == 0 else f"{pipeline_dir}/{stages[i - 1]}/{FINAL_MODEL_DIR}"
    return f"vst-train stage={stage} model={init} output_dir={pipeline_dir}/{stage}"


def resolve_backbone(name: str, cfg=None) -> str:
    """Map a backbone name to a loadable checkpoint path (or hub id).

    `name`: `baseline` / `vst` (configs/backbones/), a model preset, a checkpoint directory or a hub id.
    `cfg`: a mapping (dict or DictConfig) with `model` (the preset or checkpoint the pipeline started from,
    default `tiny`), optional `pipeline_dir` (default outputs/vst/<model>) and optional `cache_dir`.
    """
    cfg = cfg or {}
    model = cfg.get("model") or "tiny"
    if name in alias_names():
        alias = BackboneAlias(**OmegaConf.to_container(OmegaConf.load(BACKBONE_CONFIGS / f"{name}.yaml")))
        if alias.stage == "pretrain" and not is_built_preset(model):
            return checkpoint_path(model)  # a real checkpoint is its own untuned baseline
        pipeline_dir = Path(cfg.get("pipeline_dir") or default_pipeline_dir(model))
        path = pipeline_dir / alias.stage / FINAL_MODEL_DIR
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"backbone={name} is the {alias.stage} stage's checkpoint {path}, which does not exist yet; "
                f"produce it with `{stage_command(alias.stage, model, pipeline_dir)}` (after the earlier stages), "
                f"or pass a checkpoint path as the backbone"
            )
        return str(path)
    return checkpoint_path(name, cache_dir=cfg.get("cache_dir"))
