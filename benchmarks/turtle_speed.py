"""Why TURTLE's linear maps and softmaxes run class-major, and how fast its training steps are.

TURTLE's tensors are (B, K) with B = 10,000 images and K = 10 clusters. On this CPU torch's softmax
over a last dimension that short, and F.linear producing it, are several times slower than the same
work laid out (K, B) (`nolabel.cluster.turtle._softmax`, `SpaceLinears.forward`). This script times
the kernels both ways, then whole training steps of `train_turtle` with the straightforward (B, K)
operations swapped in (A) and as shipped (B), on random features shaped like the Fashion-MNIST runs
(70,000 images; one space of 64 dimensions, and six - the levels of the multi-level features).

    .venv/bin/python benchmarks/turtle_speed.py          # ~2 minutes, one torch thread

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

    rows = [("log-softmax + soft cross-entropy, forward + backward",
             cross_entropy(lambda x: F.log_softmax(x, 1)), cross_entropy(lambda x: turtle._softmax(x, log=True))),
            ("softmax, forward", lambda: F.softmax(logits.detach(), 1), lambda: turtle._softmax(logits.detach())),
            ("linear map (B, 64) -> (B, 10)", lambda: F.linear(z, weight, bias),
             lambda: torch.addmm(bias[:, None], weight, z.t()).t())]
    return [{"operation": name, "row_major_ms": per_call_ms(a), "class_major_ms": per_call_ms(b)}
            for name, a, b in rows]


def row_major_forward(self, spaces):
    return [F.linear(z, linear.weight, linear.bias) for linear, z in zip(self.maps, spaces)]


def row_major_softmax(logits, log=False):
    return (F.log_softmax if log else F.softmax)(logits.float(), dim=1)


def steps_per_second(n_spaces: int, steps: int = 30) -> dict:
    rng = np.random.default_rng(0)
    spaces = [rng.normal(size=(N, D)).astype(np.float32) for _ in range(n_spaces)]
    config = TurtleConfig(n_clusters=K, steps=steps, batch_size=B, n_restarts=1, device="cpu")
    out = {}
    for layout, patches in (("row_major", [mock.patch.object(turtle.SpaceLinears, "forward", row_major_forward),
                                           mock.patch.object(turtle, "_softmax", row_major_softmax)]),
                            ("class_major", [])):
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
            "row_major_steps_per_s": out["row_major"], "class_major_steps_per_s": out["class_major"]}


def markdown(result: dict) -> str:
    lines = ["## TURTLE's layout: class-major linear maps and softmaxes", "",
             f"`.venv/bin/python benchmarks/turtle_speed.py` ({result['machine']}; load average "
             f"{result['load_average']:.2f}). B = {B} images, K = {K} clusters; (B, K) is the straightforward "
             "layout, (K, B) what `nolabel.cluster.turtle` computes.", "",
             "| operation | (B, K) ms | (K, B) ms | speed-up |", "|---|---|---|---|"]
    lines += [f"| {r['operation']} | {r['row_major_ms']:.3f} | {r['class_major_ms']:.3f} | "
              f"{r['row_major_ms'] / r['class_major_ms']:.1f}x |" for r in result["kernels"]]
    lines += ["", "| train_turtle, N = 70,000, batch 10,000 | (B, K) steps/s | (K, B) steps/s | speed-up |",
              "|---|---|---|---|"]
    lines += [f"| {r['spaces']} space(s) x {r['dims']} d | {r['row_major_steps_per_s']:.2f} | "
              f"{r['class_major_steps_per_s']:.2f} | {r['class_major_steps_per_s'] / r['row_major_steps_per_s']:.1f}x |"
              for r in result["training"]]
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(1)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} vCPUs, torch threads 1, torch {torch.__version__}",
              "load_average": os.getloadavg()[0], "kernels": kernels(),
              "training": [steps_per_second(1), steps_per_second(6)]}
    text = markdown(result)
    print(text)
    replace_section(ROOT / "BENCHMARKS.md", "turtle-speed", text)
    write_json(ROOT / "results" / "turtle_speed.json", result)


if __name__ == "__main__":
    main()
