"""Rewards on hand-made completions, called as plain functions and the way TRL's GRPOTrainer calls them."""

import json
from types import SimpleNamespace

import pytest
import torch

from vst.rewards import (
    RewardConfig,
    accuracy_reward,
    accuracy_score,
    completion_text,
    format_reward,
    format_score,
    mixed_reward,
)

CHOICE = json.dumps(
    {"answer_mode": "choice", "gt": "C", "options": ["cube", "ball", "cone"], "skill": "depth"}
)
NUMERIC = json.dumps({"answer_mode": "numeric", "gt": 2.0, "unit": "m", "skill": "distance"})
TEXT = json.dumps({"answer_mode": "text", "gt": "blue", "skill": "color"})
BOXES = json.dumps(
    {
        "answer_mode": "boxes3d",
        "gt": [{"label": "cube", "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]}],
        "skill": "det3d",
    }
)


@pytest.mark.parametrize(
    ("completion", "score"),
    [
        ("<think>The cone is nearest.</think> C", 1.0),
        ("  <think>\nstep\n</think>\nAnswer: C\n", 1.0),
        ("C", 0.0),  # no think block
        ("<think>reasoning</think>", 0.0),  # no answer
        ("<think>reasoning</think>   \n", 0.0),
        ("<think>   </think> C", 0.0),  # empty reasoning
        ("<think>a</think><think>b</think> C", 0.0),  # two blocks
        ("<think>a</think> C </think>", 0.0),
        ("<think>a C", 0.0),
        ("a</think> C", 0.0),
        ("</think>a<think> C", 0.0),
        ("Sure! <think>a</think> C", 0.0),  # text before the block
        ("", 0.0),
        (None, 0.0),
        (3.5, 0.0),
    ],
)
def test_format_score(completion, score):
    assert format_score(completion) == score


def test_accuracy_by_mode():
    assert accuracy_score("<think>x</think> C", CHOICE) == 1.0
    assert accuracy_score("<think>x</think> (A)", CHOICE) == 0.0
    assert accuracy_score("<think>x</think> 2.08 m", NUMERIC) == 1.0  # 4% off: within the default 5%
    assert accuracy_score("<think>x</think> 210 cm", NUMERIC) == 1.0  # exactly 5%
    assert accuracy_score("<think>x</think> 2.2 m", NUMERIC) == 0.0  # 10%
    assert accuracy_score("<think>x</think> 2.2 m", NUMERIC, rel_tol=0.1) == 1.0
    assert accuracy_score("<think>x</think> 2.2 m", NUMERIC, numeric="mra") == pytest.approx(0.8)
    assert accuracy_score("<think>x</think> Blue.", TEXT) == 1.0
    fenced = '<think>x</think> ```json\n[{"label": "cube", "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]}]\n```'
    assert accuracy_score(fenced, BOXES) == 1.0
    half = '<think>x</think> [{"label": "cube", "bbox_3d": [0.5, 0, 2, 1, 1, 1, 0, 0, 0]}]'  # IoU 1/3
    assert accuracy_score(half, BOXES) == pytest.approx(0.5 * (1 / 3) + 0.5 * 1.0)


def test_mixed_reward_is_half_accuracy_half_format():
    completions = [
        "<think>nearest is the cone</think> C",  # right, formatted
        "C",  # right, unformatted
        "<think>hmm</think> A",  # wrong, formatted
        "<think>hmm A",  # malformed
    ]
    meta = [CHOICE] * 4
    assert mixed_reward(completions, meta) == [1.0, 0.5, 0.5, 0.0]
    assert mixed_reward(completions, meta, accuracy_weight=1.0, format_weight=0.0) == [1.0, 1.0, 0.0, 0.0]
    assert RewardConfig()(completions, meta) == [1.0, 0.5, 0.5, 0.0]


def test_conversational_completions_and_trl_keywords():
    conversational = [
        [{"role": "assistant", "content": "<think>near</think> C"}],
        [
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "<think>near</think> "}, {"type": "text", "text": "C"}],
            }
        ],
        [{"role": "assistant", "content": None}],
        "not a list of messages but a plain string: C",
    ]
    assert completion_text(conversational[1]) == "<think>near</think> C"
    extra = {"prompts": ["p"] * 4, "completion_ids": [[1]] * 4, "trainer_state": None, "log_metric": print}
    assert format_reward(conversational, meta_info=[CHOICE] * 4, **extra) == [1.0, 1.0, 0.0, 0.0]
    assert accuracy_reward(conversational, meta_info=[CHOICE] * 4, **extra) == [1.0, 1.0, 0.0, 1.0]


def test_meta_info_must_line_up_with_completions():
    with pytest.raises(ValueError, match="one entry per completion"):
        accuracy_reward(["C", "C"], meta_info=[CHOICE])
    with pytest.raises(ValueError, match="one entry per completion"):
        accuracy_reward(["C"], meta_info=CHOICE)
    with pytest.raises(ValueError, match="answer_mode"):
        accuracy_reward(["C"], meta_info=[json.dumps({"answer_mode": "vibes", "gt": 1})])
    with pytest.raises(ValueError, match="numeric"):
        RewardConfig(numeric="fuzzy")


def test_rewards_through_grpo_trainers_own_reward_loop():
    """Run TRL 1.16's GRPOTrainer._calculate_rewards (the code that calls reward functions) on our functions."""
    from trl import GRPOTrainer

    cfg = RewardConfig()
    funcs = cfg.functions()
    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(device=torch.device("cpu"), is_main_process=True),
        args=SimpleNamespace(report_to=[]),
        state=SimpleNamespace(global_step=0),
        reward_funcs=funcs,
        reward_processing_classes=[None] * len(funcs),
        reward_func_names=["accuracy_reward", "format_reward"],
        environments=None,
        _log_completion_extra=lambda *a, **k: None,
        _log_metric=lambda *a, **k: None,
    )
    completions = ["<think>cone</think> C", "C", "<think>x</think> 2.05 m", "garbage <think>"]
    inputs = [
        {"prompt": "q1", "meta_info": CHOICE, "id": "a"},
        {"prompt": "q1", "meta_info": CHOICE, "id": "a"},
        {"prompt": "q2", "meta_info": NUMERIC, "id": "b"},
        {"prompt": "q2", "meta_info": NUMERIC, "id": "b"},
    ]
    per_func = GRPOTrainer._calculate_rewards(
        trainer, inputs, [i["prompt"] for i in inputs], completions, [[0]] * 4
    )
    assert per_func.tolist() == [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    total = (per_func * torch.tensor(cfg.weights)).sum(1)
    assert total.tolist() == mixed_reward(completions, [i["meta_info"] for i in inputs])


def test_the_data_engines_cot_and_rl_rows_earn_full_reward(tmp_path):
    """CoT references are complete completions (format 1, accuracy 1); RL rows keep the bare answer as reference,
    which is right once the policy wraps it after its reasoning."""
    from vst.data.cli import run as vst_data
    from vst.data.io import read_rows
    from vst.data.render import close_renderer

    mix = {"perception": 0, "cot": 0.5, "rl": 0.5, "general": 0}
    try:
        vst_data(
            {"row_mix": mix, "n": 24, "seed": 0, "output_dir": str(tmp_path), "progress": False, "workers": 1}
        )
    finally:
        close_renderer()
    rows = list(read_rows(str(tmp_path)))
    cot = [r for r in rows if "thought" in r["type"]]
    rl = [r for r in rows if r["type"] == "rl"]
    assert cot and rl
    assert mixed_reward([r["conversations"][-1]["value"] for r in cot], [r["meta_info"] for r in cot]) == [
        1.0
    ] * len(cot)
    completions = [f"<think>reasoning</think> {r['conversations'][-1]['value']}" for r in rl]
    assert mixed_reward(completions, [r["meta_info"] for r in rl]) == [1.0] * len(rl)
    bare = [r["conversations"][-1]["value"] for r in rl]
    assert mixed_reward(bare, [r["meta_info"] for r in rl]) == [0.5] * len(rl)  # right but unformatted
