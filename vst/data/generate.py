"""From a seed to rows: the per-sample plan, scene -> cameras -> render -> question -> row.

Sample i of a dataset depends only on (seed, split, i) and the generation config, never on how many samples,
shards or worker processes there are, so shards are byte-identical however they are produced and a run can be
resumed or extended.
"""

import dataclasses
import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .render import get_renderer
from .rows import GENERATOR_VERSION, SPLITS, make_row
from .scene import Camera, SceneConfig, ViewError, sample_room, sample_tabletop
from .skills import SKILLS, Ctx, Skill, resolve_skills

SPLIT_CODES = {"train": 0, "bench": 1, "bench_general": 2}
MAX_ATTEMPTS = 40
_SAMPLERS = {"tabletop": sample_tabletop, "room": sample_room}


class GenerationError(RuntimeError):
    """A skill could not produce a valid question (the config leaves it no room)."""


@dataclass
class DataConfig:
    """Everything that decides what the rows contain (`fingerprint` covers exactly these)."""

    seed: int = 0
    split: str = "train"
    skills: object = "all"  # "all" | "a,b,c" | list of names
    image_width: int = 224
    image_height: int = 168
    video_width: int = 160
    video_height: int = 120
    video_frames: int = 8
    fov_unify: bool = False  # re-render every camera at the size that gives it focal length `base_focal`
    base_focal: float = 160.0
    image_format: str = "jpeg"  # "jpeg" | "png"
    jpeg_quality: int = 90
    keep_depth: bool = False  # add a `depths` column (16-bit PNG, millimetres)
    min_pixel_frac: float = 0.001  # an entity counts as visible with at least this fraction of the pixels
    # The paper's VST-P family mix (single 65%, multi 33%, video 2%) ...
    family_mix: dict = field(
        default_factory=lambda: {"single_image": 0.65, "multi_image": 0.33, "video": 0.02}
    )
    # ... and row kinds: VST-P perception, VST-R CoT (78%) and RL (22%) at the paper's 4.1M : 135K ratio, plus
    # general rows that keep the backbone's general ability.
    row_mix: dict = field(
        default_factory=lambda: {"perception": 0.87, "cot": 0.025, "rl": 0.007, "general": 0.098}
    )
    cot_general_frac: float = 0.2  # share of CoT rows that are general (non-spatial) reasoning
    scene: SceneConfig = field(default_factory=SceneConfig)

    def __post_init__(self):
        if isinstance(self.scene, dict):
            self.scene = SceneConfig(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in self.scene.items()}
            )
        self.validate()

    def validate(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r}: choose one of {SPLITS}")
        self.skill_names = resolve_skills(self.skills)
        if self.split == "bench" and not self.spatial_skills:
            raise ValueError("split=bench needs at least one spatial (non-general) skill")
        if self.split == "bench_general" and not self.general_skills:
            raise ValueError("split=bench_general needs at least one general skill")
        if self.image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format={self.image_format!r}: use 'jpeg' or 'png'")
        for key in ("image_width", "image_height", "video_width", "video_height"):
            if not 16 <= getattr(self, key) <= 640:
                raise ValueError(f"{key}={getattr(self, key)} must be within 16..640 pixels")
        if self.video_frames < 4:
            raise ValueError(f"video_frames={self.video_frames}: need at least 4 frames")
        if self.fov_unify and self.base_focal <= 0:
            raise ValueError("base_focal must be positive")
        for name, mix, keys in (
            ("family_mix", self.family_mix, ("single_image", "multi_image", "video")),
            ("row_mix", self.row_mix, ("perception", "cot", "rl", "general")),
        ):
            bad = set(mix) - set(keys)
            if bad or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
                raise ValueError(f"{name}={dict(mix)}: keys must be among {keys}, weights >= 0, not all 0")
        self.scene.validate()

    @property
    def spatial_skills(self) -> list[str]:
        return [s for s in self.skill_names if SKILLS[s].family != "general"]

    @property
    def general_skills(self) -> list[str]:
        return [s for s in self.skill_names if SKILLS[s].family == "general"]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["skills"] = self.skill_names
        d["generator_version"] = GENERATOR_VERSION
        return d


def _digest(seed: int, split: str, index: int) -> bytes:
    return hashlib.blake2b(f"vst-sim|{seed}|{SPLIT_CODES[split]}|{index}".encode(), digest_size=32).digest()


def sample_seed(seed: int, split: str, index: int) -> int:
    """A 63-bit seed per sample; the split is part of the key, so benchmark seeds never meet training seeds."""
    return int.from_bytes(_digest(seed, split, index)[:8], "little") >> 1


def _plan_uniforms(seed: int, split: str, index: int) -> list[float]:
    """Three uniforms in [0, 1) for the sample's plan (a hash: planning 100k samples takes well under a second)."""
    d = _digest(seed, split, index)
    return [int.from_bytes(d[8 * k : 8 * k + 8], "little") / 2**64 for k in (1, 2, 3)]


def _weighted(u: float, items: list[tuple[str, float]]) -> str:
    """The item whose cumulative-weight interval holds u (u uniform in [0, 1))."""
    total = sum(w for _, w in items)
    acc = 0.0
    for name, w in items:
        acc += w / total
        if u < acc:
            return name
    return items[-1][0]


def plan_sample(cfg: DataConfig, index: int) -> tuple[str, str, int]:
    """(skill, row type, sample seed) of sample `index`."""
    seed = sample_seed(cfg.seed, cfg.split, index)
    if cfg.split == "bench":
        skills = cfg.spatial_skills
        return skills[index % len(skills)], "perception", seed
    if cfg.split == "bench_general":
        skills = cfg.general_skills
        return skills[index % len(skills)], "general", seed
    u_kind, u_family, u_skill = _plan_uniforms(cfg.seed, cfg.split, index)
    kinds, general, cot_general, spatial_families, cot_families = _pools(cfg)
    kind = _weighted(u_kind, kinds)
    if kind == "general":
        return _weighted(u_skill, general), "general", seed
    if kind == "cot":
        if cot_general and (not cot_families or u_family < cfg.cot_general_frac):
            return _weighted(u_skill, cot_general), "general_thought", seed
        families, row_type = cot_families, "spatial_thought"
    else:
        families, row_type = spatial_families, kind
    family = _weighted(u_family, [(f, w) for f, w, _ in families])
    return _weighted(u_skill, next(p for f, _, p in families if f == family)), row_type, seed


def _pools(cfg: DataConfig) -> tuple:
    """Weighted choices the plan draws from, built once per config (cached on it; configs are not mutated)."""
    cached = getattr(cfg, "_pools", None)
    if cached is not None:
        return cached
    weighted = lambda names: [(s, SKILLS[s].weight) for s in names]  # noqa: E731
    spatial, general = cfg.spatial_skills, cfg.general_skills
    cot_spatial = [s for s in spatial if SKILLS[s].cot]
    cot_general = [s for s in general if SKILLS[s].cot]
    available = {
        "perception": bool(spatial),
        "rl": bool(spatial),
        "cot": bool(cot_spatial or cot_general),
        "general": bool(general),
    }
    kinds = [(k, w) for k, w in cfg.row_mix.items() if available[k] and w > 0]
    if not kinds:
        raise ValueError(f"row_mix={dict(cfg.row_mix)} leaves no row kind for skills {cfg.skill_names}")

    def by_family(pool: list[str]) -> list[tuple[str, float, list]]:
        fams = [
            (f, w) for f, w in cfg.family_mix.items() if w > 0 and any(SKILLS[s].family == f for s in pool)
        ]
        if not fams:  # the mix zeroes every family that has a selected skill: use those families evenly
            fams = [(f, 1.0) for f in sorted({SKILLS[s].family for s in pool})]
        return [(f, w, weighted([s for s in pool if SKILLS[s].family == f])) for f, w in fams]

    pools = (kinds, weighted(general), weighted(cot_general), by_family(spatial), by_family(cot_spatial))
    cfg._pools = pools
    return pools


def unify_focal(cam: Camera, base_focal: float) -> Camera:
    """The same camera re-sized so its focal length is `base_focal` (VST's FoV unification, no resampling)."""
    from .geometry import focal_unified_size

    w, h = focal_unified_size(cam.width, cam.height, float(cam.K[0, 0]), base_focal)
    if max(w, h) > 640:
        raise ValueError(f"base_focal={base_focal} makes a {w}x{h} image; lower base_focal")
    return Camera(cam.cam_to_world, cam.fovy, w, h)


def encode_image(rgb: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    else:
        Image.fromarray(rgb).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def encode_depth(depth: np.ndarray) -> bytes:
    mm = np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(mm).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def render_question(cfg: DataConfig, skill: Skill, seed: int, checkable: bool):
    """Draw scenes until the skill can ask a clean question; returns (qa, scene, views)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    scene_cfg = dataclasses.replace(cfg.scene, held_out="exclude" if cfg.split == "train" else "include")
    renderer = get_renderer(scene_cfg.max_objects, scene_cfg.max_furniture)
    video = skill.family == "video"
    width, height = (cfg.video_width, cfg.video_height) if video else (cfg.image_width, cfg.image_height)
    for attempt in range(MAX_ATTEMPTS):
        layout = skill.pick_layout(rng)
        scene = _SAMPLERS[layout](rng, scene_cfg, f"{layout}-{seed:016x}-{attempt}")
        try:
            cams = skill.cameras(rng, scene, width, height, cfg.video_frames)
        except ViewError:
            continue
        if cfg.fov_unify:
            cams = [unify_focal(c, cfg.base_focal) for c in cams]
        views = renderer.render(scene, cams)
        min_pixels = max(12, round(cfg.min_pixel_frac * cams[0].width * cams[0].height))
        qa = skill.ask(Ctx(scene, views, rng, checkable, min_pixels))
        if qa is not None:
            return qa, scene, views
    raise GenerationError(
        f"skill {skill.name!r} found no valid question in {MAX_ATTEMPTS} scenes (seed {seed}); "
        "the scene config may leave it too few visible objects"
    )


def generate_row(cfg: DataConfig, skill_name: str, row_type: str, seed: int) -> dict:
    skill = SKILLS[skill_name]
    thought = row_type in ("spatial_thought", "general_thought")
    checkable = row_type == "rl" or cfg.split != "train"
    for retry in range(MAX_ATTEMPTS):
        qa, scene, views = render_question(cfg, skill, seed + retry, checkable)
        if not thought or qa.think:
            break
    else:
        raise GenerationError(f"skill {skill_name!r} gave no reasoning trace for a CoT row (seed {seed})")
    rgbs = qa.images if qa.images is not None else [v.rgb for v in views]
    images = [encode_image(x, cfg.image_format, cfg.jpeg_quality) for x in rgbs]
    row = make_row(
        qa,
        images,
        "jpg" if cfg.image_format == "jpeg" else "png",
        row_type=row_type,
        video=skill.family == "video",
        skill=skill_name,
        family=skill.family,
        split=cfg.split,
        seed=seed,
        scene_id=scene.scene_id,
        cameras=[v.camera.to_dict() for v in views],
        scene=scene.to_dict(),
        fov_unified=cfg.fov_unify,
    )
    if cfg.keep_depth:
        row["depths"] = [encode_depth(v.depth) for v in views]
    return row


def generate_rows(cfg: DataConfig, indices) -> list[dict]:
    """Rows for sample indices, in order (what one worker task does)."""
    return [generate_row(cfg, *plan_sample(cfg, i)) for i in indices]
