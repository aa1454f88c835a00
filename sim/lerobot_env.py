"""The suite as a LeRobot env type (`--env.type=vst_sim`), so stock `lerobot-eval` can run it.

`task` is one task name, a suite ("spatial", "plain", "all") or a comma-separated list; a multi-task selection
gives one vector env per task, the layout `lerobot-eval` aggregates per task like LIBERO's.
"""

from dataclasses import dataclass, field
from functools import partial

import gymnasium as gym
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

from sim.env import ACTION_DIM, CAMERAS, CONTROL_FREQ, STATE_DIM, make_env
from sim.tasks import resolve_tasks

ENV_TYPE = "vst_sim"


def dataset_features(image_size: int) -> dict[str, PolicyFeature]:
    """Env observation keys -> features (HWC images, as LeRobot env configs declare them)."""
    feats = {ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))}
    feats["agent_pos"] = PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,))
    for cam in CAMERAS:
        feats[f"pixels/{cam}"] = PolicyFeature(type=FeatureType.VISUAL, shape=(image_size, image_size, 3))
    return feats


@EnvConfig.register_subclass(ENV_TYPE)
@dataclass
class VstSimEnv(EnvConfig):
    task: str = "spatial"
    fps: int = CONTROL_FREQ
    image_size: int = 128
    episode_length: int | None = None  # default: each task's own budget
    features: dict[str, PolicyFeature] = field(default_factory=dict)
    features_map: dict[str, str] = field(
        default_factory=lambda: {
            ACTION: ACTION,
            "agent_pos": OBS_STATE,
            **{f"pixels/{cam}": f"{OBS_IMAGES}.{cam}" for cam in CAMERAS},
        }
    )

    def __post_init__(self):
        resolve_tasks(self.task)  # fail now, with the list of valid names, not deep inside env creation
        if not self.features:
            self.features = dataset_features(self.image_size)

    @property
    def package_name(self) -> str:
        return "sim"

    @property
    def gym_id(self) -> str:
        return f"sim/{resolve_tasks(self.task)[0]}-v0"

    @property
    def gym_kwargs(self) -> dict:
        return {"image_size": self.image_size, "max_steps": self.episode_length}

    def create_envs(
        self, n_envs: int, use_async_envs: bool = False
    ) -> dict[str, dict[int, gym.vector.VectorEnv]]:
        env_cls = gym.vector.AsyncVectorEnv if (use_async_envs and n_envs > 1) else gym.vector.SyncVectorEnv
        extra = {"context": "forkserver"} if env_cls is gym.vector.AsyncVectorEnv else {}
        out: dict[str, dict[int, gym.vector.VectorEnv]] = {}
        for i, name in enumerate(resolve_tasks(self.task)):
            fns = [partial(make_env, name, **self.gym_kwargs)] * n_envs
            out.setdefault(name, {})[i] = env_cls(
                fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP, **extra
            )
        return out
