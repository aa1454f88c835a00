import gymnasium as gym
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import sim  # noqa: F401
from sim.env import ACTION_DIM, CAMERAS, GRIPPER_DOWN, STATE_DIM, SimEnv, eef_rotation
from sim.init_states import expected_digests, state_digest
from sim.palette import TABLE_RGBA
from sim.tasks import TASKS


@pytest.mark.parametrize("name", list(TASKS))
def test_task_contract_expert_and_initial_states(name):
    """Per task: the observation contract, fixed initial states, and the expert solving it on two seeds."""
    env = SimEnv(name, image_size=48, expert=True)
    try:
        assert env.task_description and env.task == name
        digests = expected_digests(name)
        for seed in list(digests)[:2]:
            obs, info = env.reset(seed=seed)
            assert state_digest(env) == digests[seed], (
                f"{name} seed {seed}: initial state moved; bump init_states"
            )
        assert env.observation_space.contains(obs)
        assert set(obs["pixels"]) == set(CAMERAS)
        assert obs["agent_pos"].shape == (STATE_DIM,) and obs["agent_pos"].dtype == np.float32
        assert info["is_success"] is False
        for seed in (11, 12):  # training-range seeds
            obs, _ = env.reset(seed=seed)
            assert np.linalg.norm(obs["agent_pos"][3:6]) < 0.3  # the hand starts (about) pointing down
            for _ in range(env.max_steps):
                previous = obs["agent_pos"]
                obs, reward, terminated, truncated, info = env.step(obs["expert_action"])
                # the rotation part of the state is continuous (no +-pi flips)
                assert np.abs(obs["agent_pos"][3:6] - previous[3:6]).max() < 0.3
                if terminated or truncated:
                    break
            assert info["is_success"], f"expert failed {name} seed {seed}: {info.get('failure_reason')}"
            assert reward == 1.0 and terminated and not truncated
            assert info["picked"] == "target"
    finally:
        env.close()


@pytest.fixture(scope="module")
def lift():
    env = SimEnv("lift", image_size=64)
    yield env
    env.close()


def test_images_are_upright(lift):
    obs, _ = lift.reset(seed=0)
    img = obs["pixels"]["agentview"].astype(float)
    table = np.array(TABLE_RGBA[:3]) * 255
    bottom = np.linalg.norm(img[-6:, 24:40].mean(axis=(0, 1)) - table)
    top = np.linalg.norm(img[:6, 24:40].mean(axis=(0, 1)) - table)
    assert bottom < top, "the near table edge must be at the bottom of the agentview image"
    assert lift.render().shape == (64, 64, 3)


def test_bad_actions_raise_clear_errors(lift):
    lift.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        lift.step(np.zeros(6))
    with pytest.raises(ValueError, match="NaN"):
        lift.step(np.array([0, 0, np.nan, 0, 0, 0, 0]))
    obs, *_ = lift.step(np.zeros(ACTION_DIM))  # the env is still usable
    assert obs["agent_pos"].shape == (STATE_DIM,)


def test_unstable_simulation_ends_episode_with_reason(lift):
    lift.reset(seed=0)
    lift.unwrapped._data.qvel[:] = 1e4
    obs, reward, terminated, truncated, info = lift.step(np.zeros(ACTION_DIM))
    assert terminated and not info["is_success"]
    assert info["failure_reason"].startswith("unstable")
    again = lift.step(np.zeros(ACTION_DIM))  # frozen until reset, no crash
    assert again[2] and again[4]["failure_reason"] == info["failure_reason"]
    obs, info = lift.reset(seed=0)
    assert np.isfinite(obs["agent_pos"]).all()


def test_truncation_records_failure_reason():
    env = SimEnv("pick_left_of_bowl", image_size=32, max_steps=3)
    try:
        env.reset(seed=0)
        for _ in range(3):
            _, _, terminated, truncated, info = env.step(np.zeros(ACTION_DIM))
        assert truncated and not terminated
        assert info["failure_reason"] == "target_not_lifted"
        assert info["picked"] == "none"
    finally:
        env.close()


def test_picked_names_the_first_object_lifted():
    """Lifting the lookalike first counts as the wrong pick, even if the target is lifted after it."""
    env = SimEnv("pick_left_of_bowl", image_size=32, max_steps=10)
    try:
        env.reset(seed=0)
        rs = env._rs
        for name in ("lookalike", "target"):
            joint = rs.objects[name].joints[0]
            qpos = np.array(rs.sim.data.get_joint_qpos(joint))
            qpos[2] += 0.2
            rs.sim.data.set_joint_qpos(joint, qpos)
            rs.sim.forward()
            _, _, _, _, info = env.step(np.zeros(ACTION_DIM))
            assert info["picked"] == "wrong" and info["picked_lookalike"]
            assert info.get("failure_reason") is None
    finally:
        env.close()


def test_knocking_the_bowl_up_is_a_wrong_pick_but_not_a_lookalike():
    env = SimEnv("pick_left_of_bowl", image_size=32, max_steps=10)
    try:
        env.reset(seed=0)
        _, _, _, _, info = env.step(np.zeros(ACTION_DIM))
        assert info["picked"] == "none" and not info["picked_lookalike"]
        rs = env._rs
        joint = rs.objects["bowl"].joints[0]
        qpos = np.array(rs.sim.data.get_joint_qpos(joint))
        qpos[2] += 0.2
        rs.sim.data.set_joint_qpos(joint, qpos)
        rs.sim.forward()
        _, _, _, _, info = env.step(np.zeros(ACTION_DIM))
        assert info["picked"] == "wrong" and not info["picked_lookalike"]
    finally:
        env.close()


def test_gym_registration_and_reset_determinism():
    env = gym.make("sim/pick_closest-v0", image_size=32)
    a, _ = env.reset(seed=5)
    b, _ = env.reset(seed=5)
    np.testing.assert_array_equal(a["pixels"]["agentview"], b["pixels"]["agentview"])
    np.testing.assert_array_equal(a["agent_pos"], b["agent_pos"])
    env.close()


def test_eef_rotation_is_zero_pointing_down_and_continuous_where_axis_angle_flips():
    np.testing.assert_allclose(eef_rotation(GRIPPER_DOWN.as_matrix()), 0, atol=1e-12)
    for sign in (-1, 1):  # a 0.05 rad tilt either way: the absolute axis-angle jumps by ~2 pi, ours by 0.1
        tilted = Rotation.from_rotvec([sign * 0.05, 0, 0]) * GRIPPER_DOWN
        np.testing.assert_allclose(eef_rotation(tilted.as_matrix()), [sign * 0.05, 0, 0], atol=1e-9)
    a, b = (Rotation.from_rotvec([s * 0.05, 0, 0]) * GRIPPER_DOWN for s in (-1, 1))
    assert np.linalg.norm(a.as_rotvec() - b.as_rotvec()) > 3  # what LIBERO's state convention does here


def test_lerobot_env_config_makes_vector_envs():
    from lerobot.envs.utils import env_to_policy_features, preprocess_observation

    from sim.lerobot_env import VstSimEnv

    with pytest.raises(KeyError, match="valid tasks"):
        VstSimEnv(task="nope")
    cfg = VstSimEnv(task="lift", image_size=32)
    envs = cfg.create_envs(n_envs=1)
    venv = envs["lift"][0]
    try:
        obs, _ = venv.reset(seed=[0])
        batch = preprocess_observation(obs)
        feats = env_to_policy_features(cfg)
        for key, feat in feats.items():
            if key != "action":
                assert tuple(batch[key].shape[1:]) == tuple(feat.shape), key
        assert venv.call("task_description")[0] == "lift the red cube"
    finally:
        venv.close()


def test_a_non_positive_episode_budget_is_refused():
    with pytest.raises(ValueError, match="max_steps=0"):
        SimEnv("pick_left_of_bowl", image_size=32, max_steps=0)
