"""Packing one step's sequences into rows without padding, each shared prompt computed once.

A step (data.StepBatch) is a list of (input_ids, labels) sequences in groups (forget, mismatch,
normal, ...). Packing turns it into a few rows for ONE decoder forward:

- A *unit* is a prompt (the trunk) followed by one or more answers (branches). Sequences of a
  shared group whose prompts are the same token ids (a forget example's forget answer and its K
  mismatch answers) become one unit: the prompt is laid out once, then each answer. Every other
  sequence is a unit of its own (trunk = the whole sequence, no branch).
- Position ids restart at 0 for every unit; a branch continues from its prompt's end, so each answer
  sees exactly the positions it would see alone.
- Attention (``attention_bias``): a token attends to earlier tokens of its own unit's trunk and of
  its own branch only (a prefix-tree mask); nothing crosses units; padding attends only to itself.
- Units are packed first-fit-decreasing into rows of at most ``row_tokens`` tokens (or the longest
  unit): the dense [T, T] mask costs O(T^2) attention per row, so bounding rows keeps it cheap on CPU.

``Reads`` say which positions a loss reads: for answer NLL the position whose hidden state predicts
each labelled token (the prompt's last position for the first answer token), for KL every position
of a sequence but its last. With them the step applies the LM head only where a loss reads.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field

import torch

from unlearnkit.data import StepBatch
from unlearnkit.losses import IGNORE_INDEX


@dataclass
class Reads:
    """Positions one group's loss reads, in sequence order.

    index: [n] flat index into the packed [R*T] positions whose hidden state predicts the next token.
    target: [n] the next token id (answer reads) or -100 (KL reads, every token counts).
    sequence: [n] which sequence of the group (0..count-1) the read belongs to.
    count: number of sequences in the group.
    """

    index: torch.Tensor
    target: torch.Tensor
    sequence: torch.Tensor
    count: int

    def to(self, device: torch.device) -> "Reads":
        return Reads(self.index.to(device), self.target.to(device), self.sequence.to(device), self.count)


@dataclass
class PackedRows:
    """A packed step: [R, T] rows plus the reads of every group.

    input_ids / position_ids: [R, T] long. unit / branch: [R, T] long, which unit (prompt tree) and
    which branch of it (0 = the trunk) each position holds; padding has a unit of its own.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    unit: torch.Tensor
    branch: torch.Tensor
    answer_reads: dict[str, Reads] = field(default_factory=dict)
    token_reads: dict[str, Reads] = field(default_factory=dict)
    # Flat packed index of every token of every sequence, by group (hidden states per sequence).
    coords: dict[str, list[list[int]]] = field(default_factory=dict)

    @property
    def num_positions(self) -> int:
        """Real (non-padding) positions the forward computes."""
        return int((self.unit >= 0).sum())

    def attention_bias(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """[R, 1, T, T] additive mask: 0 where query q may attend key k, the dtype's minimum elsewhere.

        q sees k when both are in the same unit, k is not after q, and k is in the trunk or in q's
        own branch. Additive (not boolean) so that the eager and sdpa attention paths read it alike.
        """
        unit, branch = self.unit.to(device), self.branch.to(device)
        length = unit.shape[1]
        same_unit = unit[:, :, None] == unit[:, None, :]
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        visible_branch = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
        allowed = same_unit & causal & visible_branch
        bias = torch.zeros(allowed.shape, dtype=dtype, device=device)
        bias.masked_fill_(~allowed, torch.finfo(dtype).min)
        return bias[:, None]


@dataclass
class _Unit:
    trunk: list[int]
    branches: list[list[int]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.trunk) + sum(len(b) for b in self.branches)


def _prompt_length(labels: list[int]) -> int:
    """Leading tokens without a label: the prompt (a sequence of only prompt is all trunk)."""
    for t, label in enumerate(labels):
        if label != IGNORE_INDEX:
            return t
    return len(labels)


def _first_fit_decreasing(lengths: list[int], capacity: int) -> tuple[dict[int, tuple[int, int]], list[int]]:
    """Units placed longest first into the first row with room: {unit: (row, offset)} and each row's fill."""
    order = sorted(range(len(lengths)), key=lambda u: -lengths[u])
    row_fill: list[int] = []
    where: dict[int, tuple[int, int]] = {}
    for u in order:
        for r, used in enumerate(row_fill):
            if used + lengths[u] <= capacity:
                where[u] = (r, used)
                row_fill[r] += lengths[u]
                break
        else:
            where[u] = (len(row_fill), 0)
            row_fill.append(lengths[u])
    return where, row_fill


def pack_step(
    step: StepBatch,
    groups: list[str],
    *,
    shared: tuple[str, ...] = (),
    row_tokens: int = 512,
    pad_id: int | None = None,
    length_multiple: int = 1,
) -> PackedRows:
    """Pack the sequences of ``groups`` (a subset of step.slices) into rows.

    Args:
        step: the step's sequences.
        groups: which groups to lay out (others are left out), in this order.
        shared: groups whose sequences may share their prompt with any other sequence of these groups
            that has the same prompt ids (exact: a causal prompt's states do not depend on what follows).
        row_tokens: soft row length; a unit longer than it gets a row of its own.
        pad_id: id at padding positions (never attended to, never read).
        length_multiple: round the row length up to a multiple of this (a compiled body then sees a few
            repeating shapes instead of a new one every step; the extra positions are padding).
    Returns:
        PackedRows with answer reads for every group and token reads (for KL) for every group.
    """
    units: list[_Unit] = []
    by_prompt: dict[tuple[int, ...], int] = {}
    # Where each token of each sequence lives: (unit, branch or -1 for trunk, offset inside it).
    placement: dict[str, list[tuple[int, int, int]]] = {}
    for group in groups:
        placement[group] = []
        for ids, labels in step.sequences[step.slices[group]]:
            cut = _prompt_length(labels) if group in shared else len(ids)
            key = tuple(ids[:cut])
            if group in shared and cut > 0 and key in by_prompt:
                u = by_prompt[key]
            else:
                u = len(units)
                units.append(_Unit(list(key)))
                if group in shared and cut > 0:
                    by_prompt[key] = u
            branch = -1
            if cut < len(ids):
                units[u].branches.append(list(ids[cut:]))
                branch = len(units[u].branches) - 1
            placement[group].append((u, branch, cut))

    # First-fit decreasing into rows of `row_tokens`, and again into as many rows of balanced length: rows are
    # padded to the longest, so one full row beside a short one wastes the difference. Keep the layout that
    # computes fewer positions (ties: the first). Deterministic: ties in length keep the step's order.
    lengths = [unit.length for unit in units]
    longest, total = max(lengths), sum(lengths)
    balanced = max(longest, math.ceil(total / math.ceil(total / max(row_tokens, longest))))
    layouts = [_first_fit_decreasing(lengths, capacity) for capacity in (max(row_tokens, longest), balanced)]
    where, row_fill = min(layouts, key=lambda layout: len(layout[1]) * max(layout[1]))
    rows, length = len(row_fill), max(row_fill)
    length = -(-length // length_multiple) * length_multiple

    input_ids = torch.full((rows, length), pad_id if pad_id is not None else 0, dtype=torch.long)
    position_ids = torch.zeros((rows, length), dtype=torch.long)
    # Padding: a distinct negative unit per position, so it attends only to itself (no empty softmax rows).
    unit_of = -1 - torch.arange(rows * length, dtype=torch.long).view(rows, length)
    branch_of = torch.zeros((rows, length), dtype=torch.long)
    branch_start: list[list[int]] = []  # flat index of each branch's first token, per unit
    trunk_start: list[int] = []
    for u, unit in enumerate(units):
        r, offset = where[u]
        p = len(unit.trunk)
        input_ids[r, offset:offset + p] = torch.tensor(unit.trunk, dtype=torch.long)
        position_ids[r, offset:offset + p] = torch.arange(p)
        unit_of[r, offset:offset + unit.length] = u
        trunk_start.append(r * length + offset)
        starts, cursor = [], offset + p
        for b, tokens in enumerate(unit.branches):
            n = len(tokens)
            input_ids[r, cursor:cursor + n] = torch.tensor(tokens, dtype=torch.long)
            position_ids[r, cursor:cursor + n] = torch.arange(p, p + n)
            branch_of[r, cursor:cursor + n] = b + 1
            starts.append(r * length + cursor)
            cursor += n
        branch_start.append(starts)

    packed = PackedRows(input_ids, position_ids, unit_of, branch_of)
    for group in groups:
        answer_idx, answer_tgt, answer_seq, token_idx, token_seq = [], [], [], [], []
        packed.coords[group] = []
        for s, ((ids, labels), (u, b, cut)) in enumerate(zip(step.sequences[step.slices[group]], placement[group])):
            flat = [trunk_start[u] + t for t in range(cut)]
            if b >= 0:
                flat += [branch_start[u][b] + t for t in range(len(ids) - cut)]
            packed.coords[group].append(flat)
            for t in range(1, len(ids)):
                if labels[t] != IGNORE_INDEX:
                    answer_idx.append(flat[t - 1])
                    answer_tgt.append(labels[t])
                    answer_seq.append(s)
            token_idx += flat[:-1]
            token_seq += [s] * max(0, len(ids) - 1)
        count = len(placement[group])
        packed.answer_reads[group] = Reads(torch.tensor(answer_idx, dtype=torch.long), torch.tensor(answer_tgt, dtype=torch.long),
                                           torch.tensor(answer_seq, dtype=torch.long), count)
        packed.token_reads[group] = Reads(torch.tensor(token_idx, dtype=torch.long),
                                          torch.full((len(token_idx),), IGNORE_INDEX, dtype=torch.long),
                                          torch.tensor(token_seq, dtype=torch.long), count)
    return packed


def padded_positions(step: StepBatch, groups: list[str]) -> int:
    """Positions the old single padded batch computed for these groups: rows x longest row."""
    rows = [len(ids) for g in groups for ids, _ in step.sequences[step.slices[g]]]
    return len(rows) * max(rows) if rows else 0


def shard_step(step: StepBatch, rank: int, world: int) -> StepBatch:
    """This process's share of a step in a data-parallel run: the ``rank``-th of ``world`` equal,
    contiguous parts of every group.

    Groups are laid out per forget example (forget i; its K mismatch answers at i*K..i*K+K-1; normal
    row i of B), so contiguous equal parts keep each forget prompt with its own mismatch answers, and
    the processes together hold exactly the one-process step: same draws, same order.
    """
    if world == 1:
        return step
    sequences, slices, start = [], {}, 0
    for group, where in step.slices.items():
        rows = step.sequences[where]
        if len(rows) % world:
            raise ValueError(f"group {group} has {len(rows)} sequences, not divisible by {world} processes")
        share = len(rows) // world
        sequences.extend(rows[rank * share:(rank + 1) * share])
        slices[group] = slice(start, start + share)
        start += share
    return StepBatch(sequences, slices, step.pad_id)
