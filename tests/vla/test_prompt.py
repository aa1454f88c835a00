import numpy as np
import pytest
import torch

from vla.prompt import PromptError, clean_instruction, prompt_text, state_text


def test_prompt_text_format():
    text = prompt_text(
        "Lift the  red cube.", num_images=2, tokens_per_image=2, state=[0.1234, -0.0001], decimals=2
    )
    image = "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>"
    assert text == (
        f"<|im_start|>user\n{image}{image}What action should the robot take to lift the red cube? "
        "Robot state: +0.12 +0.00<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "Robot state" not in prompt_text("lift", 1, 4, state=None)


def test_state_text_is_fixed_precision():
    assert state_text(np.array([1.0, -1.0, 0.006, -0.004]), 2) == "+1.00 -1.00 +0.01 +0.00"
    assert state_text([0.5], 3) == "+0.500"


@pytest.mark.parametrize("bad", ["", "   ", "."])
def test_empty_instruction_is_an_error(bad):
    with pytest.raises(PromptError, match="empty task instruction"):
        clean_instruction(bad)


def test_train_and_inference_prompts_are_identical(vla):
    """The token ids of a training sample up to its first action token are exactly the ids inference feeds
    (left padding removed), for samples of different lengths, and the images are the same patches."""
    policy, pre, _ = vla.policy()
    batch = vla.batch(pre, chunk_size=4)
    batch["task"] = [
        "lift the red cube",
        "Lift the red cube.",
        "lift the red cube onto the top of the bowl",
        "lift",
    ]
    batch["observation.state"][1] = batch["observation.state"][0]  # rows 0 and 1 now ask the same question
    train = policy.training_inputs(batch)
    infer = policy.model_inputs(batch)
    first_target = (train["labels"] != -100).int().argmax(dim=1)
    for i in range(len(batch["task"])):
        prompt = train["input_ids"][i, : first_target[i]]
        served = infer["input_ids"][i][infer["attention_mask"][i].bool()]
        assert torch.equal(prompt, served)
        assert train["attention_mask"][i, : first_target[i]].all()
    assert (
        train["input_ids"][0, : first_target[0]].tolist() == train["input_ids"][1, : first_target[1]].tolist()
    )
    lengths = infer["attention_mask"].sum(1)
    assert lengths.unique().numel() > 1  # left padding really happened
    assert torch.equal(train["pixel_values"], infer["pixel_values"])
    assert torch.equal(train["image_grid_thw"], infer["image_grid_thw"])
    # The prompt's image slots match the patches: tokens per image = (56/14)^2 / 2^2.
    n_image_tokens = (train["input_ids"][0] == policy.model.config.image_token_id).sum().item()
    assert n_image_tokens == len(policy.config.cameras) * 4


def test_env_batch_gives_the_training_prompt(vla):
    """An env observation (through lerobot's preprocess_observation, as sim-eval and lerobot-eval build it)
    with the dataset's instruction gives the same prompt ids as the dataset sample of that frame."""
    import gymnasium as gym
    from lerobot.envs.utils import preprocess_observation

    import sim  # noqa: F401

    policy, pre, _ = vla.policy()
    sample = vla.batch(pre, chunk_size=4, batch_size=1)
    env = gym.make("sim/lift-v0", image_size=64)
    try:
        obs, _ = env.reset(seed=0)
        description = env.unwrapped.task_description
    finally:
        env.close()
    obs = {
        k: ({c: v[None] for c, v in val.items()} if isinstance(val, dict) else val[None])
        for k, val in obs.items()
    }
    env_batch = pre(preprocess_observation(obs) | {"task": [description]})
    assert clean_instruction(description) == clean_instruction(sample["task"][0])
    env_batch["observation.state"] = sample["observation.state"]  # same state: the text must then match too
    assert policy.prompt.prompt_ids(env_batch) == policy.prompt.prompt_ids(sample)


def test_missing_camera_names_it(vla):
    policy, pre, _ = vla.policy()
    batch = vla.batch(pre, chunk_size=4)
    del batch["observation.images.wrist"]
    with pytest.raises(PromptError, match=r"observation\.images\.wrist"):
        policy.model_inputs(batch)
    with pytest.raises(PromptError, match=r"observation\.images\.wrist"):
        policy.forward(batch)


def test_instruction_longer_than_the_context(vla):
    policy, pre, _ = vla.policy(max_length=160)
    batch = vla.batch(pre, chunk_size=4)
    policy.model_inputs(batch)  # fits
    batch["task"] = ["lift the red cube " + "and then the red cube again " * 30] * 4
    with pytest.raises(PromptError, match="instruction too long"):
        policy.model_inputs(batch)
    with pytest.raises(PromptError, match="max_length is 160"):
        policy.forward(batch)


def test_max_length_beyond_the_backbone_context(vla):
    with pytest.raises(ValueError, match="exceeds the backbone's context"):
        vla.policy(max_length=100_000)


def test_missing_state_or_task(vla):
    policy, pre, _ = vla.policy()
    batch = vla.batch(pre, chunk_size=4)
    no_state = {k: v for k, v in batch.items() if k != "observation.state"}
    with pytest.raises(PromptError, match="use_state=true"):
        policy.model_inputs(no_state)
    no_task = {k: v for k, v in batch.items() if k != "task"}
    with pytest.raises(PromptError, match="'task'"):
        policy.model_inputs(no_task)
