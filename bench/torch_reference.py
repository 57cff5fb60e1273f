"""The CPU preset's model written in plain PyTorch (eager), as a same-machine speed reference.

    python bench/torch_reference.py TEXT [--steps 300]

The same shapes as `bench/train.py --preset cpu` (4 layers, 4 heads, 128 wide, context 64,
batch 12, vocabulary 384, tied head, GELU MLP, pre-norm), AdamW (beta2 0.99, weight decay 0.1)
with gradient clipping at 1.0, on random windows of the text's bytes. Prints one line: tokens/s
over the steps after a 20-step warm-up. `bench/train.py` runs it in a subprocess before and
after its own run and reports its speed as a ratio to the mean of the two.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

VOCAB, CONTEXT, WIDTH, HEADS, LAYERS, BATCH = 384, 64, 128, 4, 4, 12


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn_norm, self.mlp_norm = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.out = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.up, self.down = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time_, _ = x.shape
        heads = self.qkv(self.attn_norm(x)).view(batch, time_, 3, HEADS, WIDTH // HEADS)
        q, k, v = heads.permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(batch, time_, WIDTH))
        return x + self.down(F.gelu(self.up(self.mlp_norm(x)), approximate="tanh"))


class TinyGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(VOCAB, WIDTH), nn.Embedding(CONTEXT, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = nn.LayerNorm(WIDTH)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.tokens(inputs) + self.positions(torch.arange(inputs.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.norm(x) @ self.tokens.weight.T
        return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("text")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    data = torch.from_numpy(np.fromfile(args.text, np.uint8).astype(np.int64))
    torch.manual_seed(0)
    model = TinyGPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    warmup = 20
    for step in range(warmup + args.steps):
        if step == warmup:
            started = time.perf_counter()
        starts = torch.randint(len(data) - CONTEXT - 1, (BATCH,))
        windows = torch.stack([data[s : s + CONTEXT + 1] for s in starts.tolist()])
        loss = model(windows[:, :-1], windows[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    elapsed = time.perf_counter() - started
    print(
        f"{args.steps * BATCH * CONTEXT / elapsed:.0f} tokens/s on {torch.get_num_threads()} threads"
    )


if __name__ == "__main__":
    main()
