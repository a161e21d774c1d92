#!/usr/bin/env python3
"""Trains the character-level language model shipped in models/charlm/.

Embedding(V, 16) -> GRU(16, 64, num_layers=2) -> Linear(64, V), trained on the Zen of Python (the
text of the `this` module, which ships with every Python) for a few hundred Adam steps on CPU.

Writes, in models/charlm/:
  charlm.safetensors        the whole model's state_dict, with string metadata: `vocab` (the
                            characters in index order), `prompt`, `n_generate`, `torch_version`
  greedy.txt                the text PyTorch generates greedily from `prompt` (the Rust example
                            `cargo run --release --example charlm` must print the same)
  charlm.case.safetensors   a reference case for the GRU (prefix `rnn`) on the embedded prompt

Run: python scripts/train_charlm.py   (seed 0; about a minute on 2 cores)
"""
import codecs
import os
import sys
import this

import torch
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import export_case  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "charlm")
PROMPT = "Beautiful is better"
N_GENERATE = 240


class CharLM(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.rnn = nn.GRU(16, 64, num_layers=2)
        self.head = nn.Linear(64, vocab)

    def forward(self, idx, h=None):
        out, h = self.rnn(self.embed(idx), h)
        return self.head(out), h


@torch.inference_mode()
def greedy(model, stoi, itos, prompt, n):
    idx = torch.tensor([stoi[c] for c in prompt]).unsqueeze(1)  # (T, 1)
    logits, h = model(idx)
    text, margins = "", []
    last = logits[-1, 0]
    for _ in range(n):
        top2 = torch.topk(last, 2).values
        margins.append(float(top2[0] - top2[1]))
        nxt = int(last.argmax())
        text += itos[nxt]
        logits, h = model(torch.tensor([[nxt]]), h)
        last = logits[-1, 0]
    return text, min(margins)


def main():
    torch.manual_seed(0)
    text = codecs.decode(this.s, "rot13")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    itos = {i: c for c, i in stoi.items()}
    data = torch.tensor([stoi[c] for c in text])
    model = CharLM(len(chars))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    seq, batch = 64, 32
    for step in range(600):
        starts = torch.randint(0, len(data) - seq - 1, (batch,))
        x = torch.stack([data[s:s + seq] for s in starts], 1)
        y = torch.stack([data[s + 1:s + seq + 1] for s in starts], 1)
        logits, _ = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(chars)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.3f}")
    model.eval()
    os.makedirs(OUT, exist_ok=True)
    meta = {"vocab": "".join(chars), "prompt": PROMPT, "n_generate": str(N_GENERATE),
            "torch_version": torch.__version__, "seed": "0",
            "generator": "scripts/train_charlm.py"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(OUT, "charlm.safetensors"), metadata=meta)
    out, margin = greedy(model, stoi, itos, PROMPT, N_GENERATE)
    with open(os.path.join(OUT, "greedy.txt"), "w") as f:
        f.write(out)
    print(f"final loss {loss.item():.3f}; greedy text (smallest top-1/top-2 logit gap {margin:.4f}):")
    print(PROMPT + out)
    with torch.inference_mode():
        emb = model.embed(torch.tensor([stoi[c] for c in PROMPT]).unsqueeze(1))
    export_case(OUT, "charlm", model, "rnn", emb, weights_file="charlm.safetensors",
                extra_meta={"seed": "0", "generator": "scripts/train_charlm.py"})


if __name__ == "__main__":
    main()
