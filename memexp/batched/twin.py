"""``trainer.twin`` under the batched launcher: every member's memoryless twins, trained in lockstep.

The single run's twins (memexp/twin.py) are copies of its model with the same initial weights, each
taking one step of the memoryless twin optimizer after every step of the run, on the same
mini-batch, with the same random numbers, at the same lr. Here each twin copy (the corrected one,
and with ``trainer.twin_uncorrected`` the plain memoryless one) is a population of its own: an
``[M, N]`` tensor of weights, a row per member, starting as a copy of the members' rows, and a
batched optimizer (memexp/batched/optim.py) of the twin optimizer with each member's
hyperparameters (memexp.twin.twin_config). After the members' step, each copy takes one step on the
members' batches at their lr, the random number generator rewound to where the members' step began
(the same dropout masks), and left where the members' step left it.

The ``twin/*`` values are the single run's (memexp.twin.twin_metrics), per member: the distance
‖θ − θ̃‖ over the member's weights, over ‖θ‖, the twin's mean mini-batch loss over the log window
and its difference to ``train/batch_loss``. A member's twin whose distance or loss is no longer
finite has diverged: its row is no longer updated and it logs nan, as the single run's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from memexp.batched.optim import BatchedOptimizer, OptimizerOptions, member_hyperparameters
from memexp.optim.closure_hvp import RNGSnapshot
from memexp.twin import TWIN_STATE_NAMES, check_twin_state, twin_config, twin_copies, twin_metrics

if TYPE_CHECKING:
    from memexp.batched.population import Population, StepBuffers


@dataclass
class TwinRows:
    """One twin copy of every member: its weights ``[M, N]``, optimizer, step buffers, the sums of
    its batch losses since the last log step and which members' copies have diverged."""

    suffix: str  # "" for the corrected twin, "_uncorrected" for the plain memoryless one
    flat: Tensor
    optimizer: BatchedOptimizer
    buffers: StepBuffers
    loss_sum: Tensor
    diverged: list[bool]

    @property
    def name(self) -> str:
        """The copy's name in a checkpoint (the single run's)."""
        return TWIN_STATE_NAMES[self.suffix]


class PopulationTwins:
    """The twins of a population's members (``trainer.twin``)."""

    def __init__(self, population: Population, decayed: dict[str, bool]) -> None:
        """``population``: built up to its optimizer, before its first step (the twins copy its weights);
        ``decayed``: which parameters the single run decays (the twin optimizer's blocks)."""
        self.population = population
        trainer = population.trainer
        self.count = 0  # steps since the last log step
        self.copies: list[TwinRows] = []
        members = len(population.members)
        for suffix, correction in twin_copies(trainer):
            cfgs = [twin_config(m.run_cfg.optimizer, correction, trainer.twin_hvp) for m in population.members]
            flat = population.flat.detach().clone()  # the members' initial weights
            optimizer = BatchedOptimizer(
                cfgs[0].name,
                population.blocks(flat),
                1,
                member_hyperparameters(cfgs),
                OptimizerOptions.of(cfgs[0], population.segments(decayed)),
            )
            loss_sum = torch.zeros(members, dtype=flat.dtype, device=flat.device)
            buffers = population.step_buffers(flat)
            self.copies.append(TwinRows(suffix, flat, optimizer, buffers, loss_sum, [False] * members))

    def step_alongside(self, x: Tensor, y: Tensor, lr: Tensor, frozen: list[int], before: RNGSnapshot) -> None:
        """Each copy's step on the members' batches ``x, y`` at their ``lr``, after the members' own
        step (``before``: the random numbers as that step began); members ``frozen`` (no longer
        training) and diverged copies keep their rows."""
        after = RNGSnapshot([self.population.flat])
        for twin in self.copies:
            if all(twin.diverged):
                continue
            kept = sorted(set(frozen) | {i for i, diverged in enumerate(twin.diverged) if diverged})
            before.restore()
            losses = self.population.update(twin.flat, twin.optimizer, twin.buffers, x, y, lr, kept)
            twin.loss_sum += losses.detach()
        after.restore()
        self.count += 1

    @torch.no_grad()
    def metrics(self, batch_losses: list[float]) -> list[dict[str, float]]:
        """Every member's ``twin/*`` now (memexp.twin.twin_metrics, per member and copy); the loss
        window restarts. ``batch_losses``: the members' ``train/batch_loss`` over the same window."""
        flat = self.population.flat.detach()
        values = [torch.linalg.vector_norm(flat, dim=1)]
        for twin in self.copies:
            values.append(torch.linalg.vector_norm(flat - twin.flat, dim=1))
            values.append(twin.loss_sum / max(self.count, 1))
            twin.loss_sum.zero_()
        host = torch.stack([v.double() for v in values], dim=1).tolist()  # [M, 1 + 2 × copies]
        out: list[dict[str, float]] = [{} for _ in host]
        for index, row in enumerate(host):
            for position, twin in enumerate(self.copies):
                distance, loss = row[1 + 2 * position], row[2 + 2 * position]
                logged, twin.diverged[index] = twin_metrics(
                    twin.suffix, distance, loss, row[0], self.count, batch_losses[index], twin.diverged[index]
                )
                out[index].update(logged)
        self.count = 0
        return out

    def member_state(self, index: int) -> dict[str, Any]:
        """Member ``index``'s twins for its checkpoint: each copy's weights (as a ``state_dict``), its
        optimizer's slice and whether it diverged."""
        return {
            twin.name: {
                "model": self.population.member_state_dict(index, twin.flat),
                "optimizer": twin.optimizer.member_state(index),
                "diverged": twin.diverged[index],
            }
            for twin in self.copies
        }

    def load_member_state(self, index: int, state: dict[str, Any] | None) -> None:
        check_twin_state(state, [twin.name for twin in self.copies])
        assert state is not None
        with torch.no_grad():
            for twin in self.copies:
                saved = state[twin.name]
                for name, param in self.population.member_params(index, twin.flat).items():
                    param.copy_(saved["model"][name])
                twin.optimizer.load_member_state(index, saved["optimizer"])
                twin.diverged[index] = bool(saved["diverged"])
