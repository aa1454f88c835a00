"""What TRL's `GRPOTrainer` lacks for VST's RL recipe, as one small subclass.

TRL 1.16 already has the rest of the recipe: group-normalised advantages, DAPO's clip-higher (`epsilon` /
`epsilon_high`), the token-level "dapo" loss, optional KL (`beta`), weighted reward functions, Qwen2.5-VL images.
It lacks three things:
- Online filtering (DAPO / EasyR1's `online_filtering`): a group whose completions all got the same reward (all
  right or all wrong) has zero advantage, so it teaches nothing, yet TRL still counts its tokens in the loss's
  normaliser and so shrinks every other group's update. Filtered groups here leave the loss entirely (their tokens
  are masked out of it and out of the token count). TRL has no re-sampling to refill the batch, so a step trains
  on the informative groups it drew.
- A stop on a non-finite loss before the optimizer step, so the last saved checkpoint stays the last good one.
- Separate learning rates for the vision tower, the merger and the LLM (the supervised stages' parameter groups).
And it works around a transformers 5.5 bug: resuming a Qwen2.5-VL run restores no weights (below).
"""

import torch
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOTrainer

from vst.sft import NonFiniteLoss, param_groups

# Rewards closer than this count as equal: a group spread this small carries no usable signal.
EQUAL_REWARD_ATOL = 1e-6


def informative_groups(
    rewards: torch.Tensor, group_size: int, atol: float = EQUAL_REWARD_ATOL
) -> torch.Tensor:
    """Per completion: True if its group (`group_size` consecutive completions of one prompt) has rewards that
    differ, False if they are all equal. NaN rewards (unscorable completions) are ignored."""
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"{tuple(rewards.shape)} rewards do not split into groups of {group_size}")
    groups = rewards.view(-1, group_size)
    scored = ~groups.isnan()
    spread = groups.where(scored, -torch.inf).amax(1) - groups.where(scored, torch.inf).amin(1)
    keep = spread > atol  # an all-NaN group has spread -inf: not informative
    return keep.repeat_interleave(group_size)


class VSTGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` plus online filtering of equal-reward groups, a NaN-loss stop and per-part learning rates
    (`part_lrs`: {"vision": lr, "merger": lr, "llm": lr}; None keeps TRL's single learning rate)."""

    def __init__(self, *args, online_filter: bool = True, part_lrs: dict[str, float] | None = None, **kwargs):
        self.online_filter, self.part_lrs = online_filter, part_lrs
        self._rewards_per_func = None
        super().__init__(*args, **kwargs)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Gathered over all processes, in the order the advantages are computed: kept for the filter below.
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        weights = self.reward_weights.to(self._rewards_per_func.device)
        rewards = (self._rewards_per_func * weights).nansum(1)
        rewards[self._rewards_per_func.isnan().all(1)] = torch.nan
        keep = informative_groups(rewards, group_size)
        if not self.online_filter:
            keep = torch.ones_like(keep)
        self._metrics[mode]["filtered_groups"].append(1.0 - keep.float().mean().item())
        n_local = out["completion_ids"].size(0)
        rank = self.accelerator.process_index
        local = keep[rank * n_local : (rank + 1) * n_local].to(out["completion_mask"].dtype)
        # TRL multiplies `tool_mask` into the loss mask (and nothing else): masking there drops the filtered
        # completions from the loss while their tokens still attend normally.
        loss_mask = out.get("tool_mask", torch.ones_like(out["completion_mask"])) * local.unsqueeze(1)
        out["tool_mask"] = loss_mask
        out["num_items_in_batch"] = self.accelerator.gather((out["completion_mask"] * loss_mask).sum()).sum()
        return out

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Every process must agree to stop, or the others would hang in the next collective.
        bad = self.accelerator.reduce(torch.tensor(float(not torch.isfinite(loss).all()), device=loss.device))
        if bad.item() > 0:
            last = get_last_checkpoint(self.args.output_dir) if self.args.output_dir else None
            raise NonFiniteLoss(
                f"loss became {loss.item()} at step {self.state.global_step + 1}: stopped before the optimizer step, "
                f"without saving. The last good checkpoint is {last or 'none (none saved yet)'}; rerun with the same "
                f"output_dir to resume from it (e.g. with a lower train.lr)"
            )
        return loss

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """transformers 5.5 saves Qwen2.5-VL checkpoints in the hub's key layout (`model.layers.*`, `visual.*`) but
        Trainer's resume loads that file raw, non-strictly, into the new layout (`model.language_model.*`,
        `model.visual.*`), so it silently restores nothing (QwenLM/Qwen3-VL#1763). `from_pretrained` maps the keys;
        its weights are then copied strictly."""
        model = self.accelerator.unwrap_model(self.model if model is None else model)
        if getattr(model, "peft_config", None) is not None or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=next(model.parameters()).dtype)
        model.load_state_dict(saved.state_dict())

    def create_optimizer(self, model=None):
        if self.part_lrs is None or self.optimizer is not None:
            return super().create_optimizer(model)
        groups = param_groups(self.model if model is None else model, self.part_lrs)
        self.optimizer = torch.optim.AdamW(
            groups, lr=self.args.learning_rate, weight_decay=self.args.weight_decay
        )
        return self.optimizer
