"""Why TURTLE's linear maps and softmaxes run class-major, why its inner gradients are written out, and
how fast its training steps are.

TURTLE's tensors are (B, K) with B = 10,000 images and K = 10 clusters. On this CPU torch's softmax
over a last dimension that short, and F.linear producing it, are several times slower than the same
work laid out (K, B) (`nolabel.cluster.turtle._softmax`, `SpaceLinears.forward`). The inner
classifiers' gradient is written out (`set_inner_gradients`) rather than recorded and replayed by
autograd in each of the 10 inner steps of every outer step. This script times the kernels both ways,
then whole training steps of `train_turtle` three ways - the straightforward (B, K) operations with
autograd's inner gradients (A), class-major with autograd's inner gradients (B), and as shipped (C) -
on random features shaped like the Fashion-MNIST runs (70,000 images; one space of 64 dimensions, six
- the levels of one multi-level feature - and 18, three backbones' levels).

    .venv/bin/python benchmarks/turtle_speed.py          # ~5 minutes, one torch thread

Writes results/turtle_speed.json and the section "TURTLE's layout" of BENCHMARKS.md, and prints its table.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from markdown_section import replace_section
from nolabel.cluster import turtle
from nolabel.config import TurtleConfig
from nolabel.io import write_json

ROOT = Path(__file__).resolve().parents[1]
N, B, K, D = 70_000, 10_000, 10, 64


def per_call_ms(fn, repeat: int = 100) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e3


def kernels() -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(B, K, generator=generator, requires_grad=True)
    targets = torch.softmax(torch.randn(B, K, generator=generator), 1)
    z = torch.randn(B, D, generator=generator)
    weight, bias = torch.randn(K, D, generator=generator), torch.randn(K, generator=generator)

    def cross_entropy(log_softmax):
        return lambda: (-(targets * log_softmax(logits)).sum(1).mean()).backward()

    classifier = turtle.SpaceLinears([D], K)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-2)

    def inner_step(set_gradients):
        def step():
            set_gradients(classifier, [z], targets)
            optimizer.step()
        return step

    rows = [("log-softmax + soft cross-entropy, forward + backward",
             cross_entropy(lambda x: F.log_softmax(x, 1)), cross_entropy(lambda x: turtle._softmax(x, log=True))),
            ("softmax, forward", lambda: F.softmax(logits.detach(), 1), lambda: turtle._softmax(logits.detach())),
            ("linear map (B, 64) -> (B, 10), then its softmax", lambda: F.softmax(F.linear(z, weight, bias), 1),
             lambda: turtle._softmax(torch.addmm(bias[:, None], weight, z.t()).t())),
            ("inner step of a 64-d classifier: gradient (autograd / written out) + Adam",
             inner_step(autograd_inner_gradients), inner_step(turtle.set_inner_gradients))]
    return [{"operation": name, "straightforward_ms": per_call_ms(a), "shipped_ms": per_call_ms(b)}
            for name, a, b in rows]


def row_major_forward(self, spaces):
    return [F.linear(z, linear.weight, linear.bias) for linear, z in zip(self.maps, spaces)]


def row_major_softmax(logits, log=False):
    return (F.log_softmax if log else F.softmax)(logits.float(), dim=1)


def autograd_inner_gradients(classifiers, spaces, targets):
    classifiers.zero_grad(set_to_none=True)
    with torch.enable_grad():
        turtle.inner_loss(classifiers(spaces), targets).backward()


VARIANTS = ("row_major_autograd", "class_major_autograd", "shipped")


def steps_per_second(n_spaces: int, steps: int = 30) -> dict:
    rng = np.random.default_rng(0)
    spaces = [rng.normal(size=(N, D)).astype(np.float32) for _ in range(n_spaces)]
    config = TurtleConfig(n_clusters=K, steps=steps, batch_size=B, n_restarts=1, device="cpu")
    out = {}

    def autograd():
        return mock.patch.object(turtle, "set_inner_gradients", autograd_inner_gradients)

    row_major = [mock.patch.object(turtle.SpaceLinears, "forward", row_major_forward),
                 mock.patch.object(turtle, "_softmax", row_major_softmax)]
    for layout, patches in (("row_major_autograd", [*row_major, autograd()]),
                            ("class_major_autograd", [autograd()]),
                            ("shipped", [])):
        for patch in patches:
            patch.start()
        try:
            start = time.perf_counter()
            turtle.train_turtle(spaces, config, show_progress=False)
            out[layout] = steps / (time.perf_counter() - start)
        finally:
            for patch in patches:
                patch.stop()
    return {"spaces": n_spaces, "dims": D, "n": N, "batch": B, "steps": steps,
            **{f"{variant}_steps_per_s": out[variant] for variant in VARIANTS}}


def markdown(result: dict) -> str:
    lines = ["## TURTLE's layout: class-major linear maps and softmaxes, written-out inner gradients", "",
             f"`.venv/bin/python benchmarks/turtle_speed.py` ({result['machine']}; load average "
             f"{result['load_average']:.2f}). B = {B} images, K = {K} clusters. Kernels: the straightforward "
             "(B, K) layout or autograd's inner gradient against what `nolabel.cluster.turtle` computes.", "",
             "| operation | straightforward ms | shipped ms | speed-up |", "|---|---|---|---|"]
    lines += [f"| {r['operation']} | {r['straightforward_ms']:.3f} | {r['shipped_ms']:.3f} | "
              f"{r['straightforward_ms'] / r['shipped_ms']:.1f}x |" for r in result["kernels"]]
    lines += ["", "Whole steps of train_turtle (N = 70,000, batch 10,000, 10 inner steps), steps/s: (A) (B, K) with "
              "autograd's inner gradients, (B) (K, B) with autograd's, (C) as shipped.", "",
              "| spaces | (A) | (B) | (C) | C / A | C / B |", "|---|---|---|---|---|---|"]
    for r in result["training"]:
        a, b, c = (r[f"{v}_steps_per_s"] for v in VARIANTS)
        lines.append(f"| {r['spaces']} x {r['dims']} d | {a:.2f} | {b:.2f} | {c:.2f} | {c / a:.1f}x | {c / b:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(1)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} vCPUs, torch threads 1, torch {torch.__version__}",
              "load_average": os.getloadavg()[0], "kernels": kernels(),
              "training": [steps_per_second(n) for n in (1, 6, 18)]}
    text = markdown(result)
    print(text)
    replace_section(ROOT / "BENCHMARKS.md", "turtle-speed", text)
    write_json(ROOT / "results" / "turtle_speed.json", result)


if __name__ == "__main__":
    main()
