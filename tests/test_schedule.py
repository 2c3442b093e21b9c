"""The learning-rate schedule: transformers' schedules with warmup from 0, stepped once per optimiser step."""

import math
from types import SimpleNamespace

import pytest
import torch

from tulu_lab.training import make_scheduler


def _rates(schedule: str, warmup_ratio: float, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = make_scheduler(optimizer, SimpleNamespace(warmup_ratio=warmup_ratio, lr_schedule=schedule), steps)
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_warmup_then_the_schedule(schedule):
    steps, warmup = 20, 3  # ceil(0.11 * 20)
    rates = _rates(schedule, 0.11, steps)
    assert rates[:warmup] == pytest.approx([2.0 * s / warmup for s in range(warmup)])
    progress = [(s - warmup) / (steps - warmup) for s in range(warmup, steps)]
    expected = {"linear": [2.0 * (1 - p) for p in progress],
                "cosine": [2.0 * 0.5 * (1 + math.cos(math.pi * p)) for p in progress],
                "constant": [2.0] * len(progress)}[schedule]
    assert rates[warmup:] == pytest.approx(expected)


def test_no_warmup_starts_at_the_full_rate():
    assert _rates("linear", 0.0, 4) == pytest.approx([2.0, 1.5, 1.0, 0.5])
