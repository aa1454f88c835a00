"""Shared fixtures of the VLA tests: a tiny demo dataset recorded by sim/, the tiny backbone, policies on it."""

import os
import shutil
from pathlib import Path

import pytest
import torch

LIFT_REPO = "local/vla_test_lift"
IMAGE_SIZE = 56  # policy input: 2x2 image tokens per camera on the tiny backbone


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The test machine has 2 shared cores: torch's thread pool spinning against other jobs makes small ops
    100x slower, one thread does not."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def backbone_cache(tmp_path_factory) -> str:
    """Built presets for this session (the tiny preset is built once, ~10 s)."""
    return str(tmp_path_factory.mktemp("vla_backbones"))


@pytest.fixture(scope="session")
def lift_dataset(tmp_path_factory) -> Path:
    """Two scripted-expert `lift` episodes at 64 px, recorded by sim/ into a LeRobotDataset (~25 s)."""
    from sim.record import record_task

    root = tmp_path_factory.mktemp("vla_data") / "lift"
    record_task("lift", episodes=2, first_seed=0, noise=0.0, image_size=64, root=root, repo_id=LIFT_REPO)
    return root


@pytest.fixture(scope="session")
def lift_meta(lift_dataset):
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    return LeRobotDatasetMetadata(LIFT_REPO, root=lift_dataset)


def make_config(meta, backbone_cache: str, **overrides):
    """A VLAConfig whose features come from the dataset, as lerobot's make_policy sets them."""
    from lerobot.configs import FeatureType
    from lerobot.utils.feature_utils import dataset_to_policy_features

    from vla.configuration_vla import VLAConfig

    features = dataset_to_policy_features(meta.features)
    kwargs = dict(
        device="cpu", cache_dir=backbone_cache, image_size=IMAGE_SIZE, chunk_size=4, n_action_steps=4
    )
    kwargs["input_features"] = {k: f for k, f in features.items() if f.type is not FeatureType.ACTION}
    kwargs["output_features"] = {k: f for k, f in features.items() if f.type is FeatureType.ACTION}
    return VLAConfig(**(kwargs | overrides))


def make_policy(meta, backbone_cache: str, **overrides):
    from vla.modeling_vla import VLAPolicy
    from vla.processor_vla import make_vla_pre_post_processors

    config = make_config(meta, backbone_cache, **overrides)
    torch.manual_seed(0)
    policy = VLAPolicy(config, dataset_stats=meta.stats, dataset_meta=meta)
    pre, post = make_vla_pre_post_processors(config, meta.stats)
    return policy, pre, post


def dataset_batch(root: Path, pre, chunk_size: int, batch_size: int = 4, start: int = 0) -> dict:
    """A preprocessed training batch of consecutive frames (the last ones run past the episode's end when
    `start` is near it, so action_is_pad is exercised)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(
        LIFT_REPO, root=root, delta_timestamps={"action": [i / 20 for i in range(chunk_size)]}
    )
    items = [ds[i] for i in range(start, start + batch_size)]
    batch = torch.utils.data.default_collate(items)
    return pre(batch)


def save_checkpoint(policy, pre, post, path: Path) -> Path:
    policy.save_pretrained(path)
    pre.save_pretrained(path)
    post.save_pretrained(path)
    return path


def move_to_fresh_dir(src: Path, dst: Path) -> Path:
    """Copy a checkpoint elsewhere and delete the original: what loads now needs nothing but `dst`."""
    shutil.copytree(src, dst)
    shutil.rmtree(src)
    return dst


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.setdefault("MUJOCO_GL", "egl")
    return env


# Helpers as fixtures (a test module cannot import this conftest by name).


@pytest.fixture(scope="session")
def vla(lift_meta, lift_dataset, backbone_cache):
    """Factory namespace: `vla.policy(**config_overrides)`, `vla.batch(pre, chunk_size)`, `vla.save(...)`."""

    class Factory:
        meta, root, cache = lift_meta, lift_dataset, backbone_cache

        @staticmethod
        def config(**overrides):
            return make_config(lift_meta, backbone_cache, **overrides)

        @staticmethod
        def policy(**overrides):
            return make_policy(lift_meta, backbone_cache, **overrides)

        @staticmethod
        def batch(pre, chunk_size: int, batch_size: int = 4, start: int = 0) -> dict:
            return dataset_batch(lift_dataset, pre, chunk_size, batch_size, start)

        save = staticmethod(save_checkpoint)
        move = staticmethod(move_to_fresh_dir)
        env = staticmethod(subprocess_env)

    return Factory
