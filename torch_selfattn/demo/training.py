"""Training the same model twice in lockstep: one copy on torch-selfattn, one
on PyTorch's SDPA, same initial weights, same batches, step by step."""
import time
from dataclasses import dataclass, field

import torch


@dataclass
class Run:
    """One training run: its model and optimizer, the loss of every step and
    the time spent in steps after the first (the first warms up)."""

    label: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    losses: list = field(default_factory=list)
    timed_seconds: float = 0.0

    def step(self, inputs, targets, device):
        start = time.perf_counter()
        _, loss = self.model(inputs, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loss = loss.item()  # waits for the device, so the time is the step's
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if self.losses:
            self.timed_seconds += time.perf_counter() - start
        self.losses.append(loss)

    def tokens_per_second(self, tokens_per_step):
        timed_steps = len(self.losses) - 1
        return tokens_per_step * timed_steps / self.timed_seconds if self.timed_seconds else float("nan")


def make_run(label, model, learning_rate):
    return Run(label, model, torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01))


def train_in_lockstep(runs, next_batch, steps, tokens_per_step, device, bar):
    """Each step draws one batch and trains every run on it; the order of the
    runs alternates, so neither always goes first (warm caches, clock drift).
    bar is a tqdm progress bar of `steps` steps; it shows the runs' losses and
    tokens/s, in the order of runs."""
    for step in range(steps):
        inputs, targets = (t.to(device) for t in next_batch())
        for run in runs if step % 2 == 0 else reversed(runs):
            run.step(inputs, targets, device)
        if step % 5 == 0 or step == steps - 1:
            bar.set_postfix_str(f"loss {' / '.join(f'{run.losses[-1]:.3f}' for run in runs)}, tokens/s "
                                f"{' / '.join(f'{run.tokens_per_second(tokens_per_step):,.0f}' for run in runs)}",
                                refresh=False)
        bar.update()
