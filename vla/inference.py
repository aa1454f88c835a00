"""Greedy action decoding with a KV cache, batched over envs, restricted to the action tokens.

Prompts are left-padded so that every row's next token sits in the last column. Qwen2.5-VL places tokens with
3-D rotary positions (images get (t, h, w) grids, text runs on from the largest position so far), computed over
the unpadded tokens only; each generated token then takes the next text position of its own row: one more than
the row's largest prompt position (`rope_positions`). Passing these positions explicitly keeps the loop
independent of the model's cached `rope_deltas` state. The output head runs in fp32 even under bf16 autocast
(bf16 logits tie neighbouring bins). `decode_uncached` recomputes everything from scratch every step: the
reference the cached loop is tested against.
"""

from collections.abc import Sequence

import torch

from vla.decoding import greedy_action_ids
from vst.cpu_amp import fp32_logits


def rope_positions(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_grid_thw: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, B, L) multimodal rotary positions of a padded batch, and (B,) the position of each row's next token."""
    mm_token_type_ids = (input_ids == model.config.image_token_id).int()
    positions, _ = model.model.get_rope_index(
        input_ids, mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
    )
    return positions, positions.amax(dim=(0, 2)) + 1  # padding sits at position 0, below every real one


def _last_logits(model, out) -> torch.Tensor:
    return fp32_logits(model.lm_head, out.last_hidden_state[:, -1])


def _pick(logits: torch.Tensor, token_range: range, stop_id: int | None) -> torch.Tensor:
    return greedy_action_ids(logits.float(), token_range, () if stop_id is None else (stop_id,))


@torch.no_grad()
def decode_actions(
    model,
    inputs: dict,
    num_tokens: int,
    token_range: range,
    stop_id: int | None = None,
) -> torch.Tensor:
    """Greedy ids (B, n <= num_tokens) from left-padded `inputs` (input_ids, attention_mask, pixel_values,
    image_grid_thw). With `stop_id` (FAST's end of sequence) a row that emitted it keeps emitting it, and the
    loop ends once every row has."""
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    positions, next_position = rope_positions(model, input_ids, attention_mask, inputs.get("image_grid_thw"))
    out = model.model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        pixel_values=inputs.get("pixel_values"),
        image_grid_thw=inputs.get("image_grid_thw"),
        use_cache=True,
    )
    cache = out.past_key_values
    token = _pick(_last_logits(model, out), token_range, stop_id)
    tokens = [token]
    done = token == stop_id if stop_id is not None else None
    ones = attention_mask.new_ones(attention_mask.shape[0], 1)
    for step in range(1, num_tokens):
        if done is not None and bool(done.all()):
            break
        attention_mask = torch.cat([attention_mask, ones], dim=1)
        position = (next_position + step - 1).view(1, -1, 1).expand(3, -1, 1)
        out = model.model(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=position,
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
        token = _pick(_last_logits(model, out), token_range, stop_id)
        if done is not None:
            token = torch.where(done, torch.full_like(token, stop_id), token)
            done |= token == stop_id
        tokens.append(token)
    return torch.stack(tokens, dim=1)


@torch.no_grad()
def decode_uncached(
    model, inputs: dict, num_tokens: int, token_range: range, stop_id: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for `decode_actions`: every step re-runs the whole sequence with positions recomputed from
    scratch. Returns the ids (B, num_tokens) and the masked step logits (B, num_tokens, V)."""
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    ids, logits = [], []
    for _ in range(num_tokens):
        positions, _ = rope_positions(model, input_ids, attention_mask, inputs.get("image_grid_thw"))
        out = model.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
        )
        step_logits = _last_logits(model, out)
        token = _pick(step_logits, token_range, stop_id)
        ids.append(token)
        logits.append(step_logits)
        input_ids = torch.cat([input_ids, token[:, None]], dim=1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(token.shape[0], 1)], dim=1)
    return torch.stack(ids, dim=1), torch.stack(logits, dim=1)


def pad_left(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (input_ids, attention_mask) of unpadded id lists."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.as_tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def pad_right(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask) of unpadded id lists (training)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)
