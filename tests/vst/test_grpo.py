"""GRPO's math as the RL stage runs it: group advantages and online filtering on hand-made reward groups (through
the real trainer's scoring step), and DAPO's asymmetric clip on hand-made probability ratios (through TRL's loss)."""

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import vst.rl as R
from vst.grpo import informative_groups

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")
SKILLS = "depth_compare,camera_motion"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from vst.data.cli import run as vst_data
    from vst.data.render import close_renderer

    out = tmp_path_factory.mktemp("rl_rows")
    mix = {"perception": 0, "cot": 0, "rl": 1, "general": 0}
    try:
        vst_data(
            {
                "row_mix": mix,
                "skills": SKILLS,
                "n": 4,
                "output_dir": str(out),
                "progress": False,
                "workers": 1,
            }
        )
    finally:
        close_renderer()
    return str(out)


def rl_cfg(data, out, cache, *overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(
            "vst_train",
            [
                "stage=rl",
                f"data={data}",
                f"output_dir={out}",
                f"cache_dir={cache}",
                "rl.max_completion_length=4",
            ]
            + list(overrides),
        )
    return R.rl_config(cfg)


def scripted(values):
    """A reward function that hands out fixed rewards, in the order the completions arrive."""

    def reward(completions, **kwargs):
        assert len(completions) == len(values)
        return list(values)

    return reward


HAND_MADE = [1.0, 1, 1, 1, 1, 0, 1, 0, 1, 0]  # two groups of 5 rollouts


@pytest.fixture(scope="module")
def trainer(data, tmp_path_factory):
    """The RL stage's trainer (tiny preset, stage defaults) whose two reward functions hand out HAND_MADE and 0."""
    out = tmp_path_factory.mktemp("out")
    cfg = rl_cfg(data, out, str(tmp_path_factory.mktemp("cache")), "rl.prompts_per_step=2")
    trainer, _, _ = R.build_trainer(
        cfg, R.grpo_args(cfg, out, world=1), [scripted(HAND_MADE), scripted([0.0] * 10)]
    )
    trainer.model.train()
    return trainer


def test_informative_groups_by_hand():
    r = torch.tensor([1.0, 1, 1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5, 0.5000001])
    assert informative_groups(r, 5).view(4, 5)[:, 0].tolist() == [False, True, False, False]
    nan = torch.tensor([math.nan, 1.0, 1.0, math.nan, math.nan, math.nan])
    assert (
        informative_groups(nan, 3).tolist() == [False] * 3 + [False] * 3
    )  # NaN ignored; all-NaN uninformative
    assert informative_groups(torch.tensor([math.nan, 0.0, 1.0]), 3).all()
    with pytest.raises(ValueError, match="do not split into groups of 5"):
        informative_groups(torch.zeros(7), 5)


@pytest.mark.parametrize("online_filter", [True, False])
def test_advantages_and_filtering_on_hand_made_groups(trainer, online_filter, monkeypatch):
    """Two prompts x 5 rollouts, rewards [1,1,1,1,1] and [0,1,0,1,0] (halved by the 0.5 weight): the first group
    has zero advantage and, with the filter on, leaves the loss and its token count; the second gets
    (r - mean) / (std + 1e-4) with the unbiased std."""
    monkeypatch.setattr(trainer, "online_filter", online_filter)
    trainer._metrics["train"].clear()
    inputs = [trainer.train_dataset[0]] * 5 + [trainer.train_dataset[1]] * 5
    out = trainer._generate_and_score_completions(inputs)

    r = 0.5 * torch.tensor([0.0, 1, 0, 1, 0])
    std = math.sqrt(((r - 0.2) ** 2).sum() / 4)  # 0.2739
    assert torch.allclose(out["advantages"][:5], torch.zeros(5))
    assert torch.allclose(out["advantages"][5:], (r - 0.2) / (std + 1e-4), atol=1e-5)
    assert torch.allclose(
        out["advantages"][5:], torch.tensor([-0.7300, 1.0950, -0.7300, 1.0950, -0.7300]), atol=1e-3
    )

    tokens = out["completion_mask"].sum(1)
    loss_rows = (out["completion_mask"] * out["tool_mask"]).sum(1)
    if online_filter:
        assert loss_rows[:5].sum() == 0 and torch.equal(loss_rows[5:], tokens[5:])
        assert out["num_items_in_batch"] == tokens[5:].sum()
        assert trainer._metrics["train"]["filtered_groups"] == [0.5]
    else:
        assert torch.equal(loss_rows, tokens) and out["num_items_in_batch"] == tokens.sum()
        assert trainer._metrics["train"]["filtered_groups"] == [0.0]
    assert trainer._metrics["train"]["reward"] == [pytest.approx(0.5 * 7 / 10)]


def test_clip_higher_on_hand_made_ratios(trainer, monkeypatch):
    """The recipe's clip [1 - 0.2, 1 + 0.28] through TRL's loss: with a positive advantage a ratio of 1.25 still
    learns (a symmetric 0.2 clip would stop it) and 1.35 is clipped; with a negative advantage 0.75 is clipped
    and 0.85 learns. Loss = -sum(min(r A, clip(r) A)) / tokens ("dapo")."""
    assert (trainer.epsilon_low, trainer.epsilon_high, trainer.beta, trainer.loss_type) == (
        0.2,
        0.28,
        0.0,
        "dapo",
    )
    monkeypatch.setattr(trainer, "current_gradient_accumulation_steps", 1, raising=False)
    log_ratio = torch.tensor([[1.25, 1.35], [0.75, 0.85]]).log().requires_grad_()
    monkeypatch.setattr(
        trainer, "_get_per_token_logps_and_entropies", lambda *a, **k: (log_ratio, torch.zeros(2, 2), None)
    )
    ones = torch.ones(2, 2, dtype=torch.long)
    inputs = {
        "prompt_ids": torch.ones(2, 1, dtype=torch.long),
        "prompt_mask": torch.ones(2, 1, dtype=torch.long),
        "completion_ids": ones,
        "completion_mask": ones,
        "old_per_token_logps": torch.zeros(2, 2),  # ratio = exp(log_ratio - 0)
        "advantages": torch.tensor([1.0, -1.0]),
        "num_items_in_batch": torch.tensor(4),
    }
    loss = trainer._compute_loss(trainer.model, inputs)
    assert loss.item() == pytest.approx(-(1.25 + 1.28 - 0.8 - 0.85) / 4, abs=1e-6)
    loss.backward()
    # d loss / d log r = -r A / 4 where unclipped, 0 where clipped
    assert torch.allclose(log_ratio.grad, torch.tensor([[-1.25, 0.0], [0.0, 0.85]]) / 4, atol=1e-6)
