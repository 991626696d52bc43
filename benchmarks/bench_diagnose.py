"""Diagnose two 100k-key manifests (target: < 0.5 s), against the plain set difference a
hand-written check would do.

    python benchmarks/bench_diagnose.py [--keys 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from pytest_ckpt.checkpoint.manifest import PARAM, Manifest, ManifestRow
from pytest_ckpt.diagnosis.engine import diagnose

TARGET_S = 0.5  # per scenario, at 100k keys (the target)

LEAVES = ("q.weight", "k.weight", "v.weight", "o.weight", "norm.weight", "norm.bias",
          "mlp.up.weight", "mlp.down.weight", "mlp.gate.weight", "scale")


def model_manifest(keys: int) -> Manifest:
    layers = keys // len(LEAVES)
    rows = [ManifestRow(f"decoder.layers.{layer}.{leaf}", "bfloat16", (64, 64), PARAM)
            for layer in range(layers) for leaf in LEAVES]
    return Manifest(tuple(rows))


def scenarios(model: Manifest) -> dict[str, Manifest]:
    """Checkpoints with drift of different kinds, each touching every key or a slice."""
    every = {"identical": [(row.key, row) for row in model],
             "prefix 'module.' on every key": [("module." + row.key, row) for row in model],
             "renamed q -> query on every layer": [
                 (row.key.replace(".q.", ".query."), row) for row in model],
             "half the layers absent": [(row.key, row) for row in model
                                        if int(row.key.split(".")[2]) % 2 == 0]}
    return {name: Manifest(tuple(ManifestRow(key, row.dtype, row.shape, row.kind)
                                 for key, row in items)) for name, items in every.items()}


def median_seconds(function: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    model = model_manifest(args.keys)
    print(f"model manifest: {len(model):,} keys; median of {args.repeat} runs")
    print(f"target: diagnose <= {TARGET_S} s per scenario at 100,000 keys (scaled by keys)")
    print(f"{'scenario':<38}{'findings':>9}{'diagnose s':>12}{'set diff s':>12}{'ratio':>8}"
          f"{'':>6}")
    target = TARGET_S * args.keys / 100_000
    misses = 0
    for name, checkpoint in scenarios(model).items():
        findings = diagnose(checkpoint, model)
        engine = median_seconds(lambda c=checkpoint: diagnose(c, model), args.repeat)
        plain = median_seconds(lambda c=checkpoint: (set(model.keys()) - set(c.keys()),
                                                     set(c.keys()) - set(model.keys())),
                               args.repeat)
        kinds = ",".join(sorted({f.kind for f in findings})) or "-"
        verdict = "ok" if engine <= target else "MISS"
        misses += verdict == "MISS"
        print(f"{name:<38}{len(findings):>9}{engine:>12.3f}{plain:>12.3f}"
              f"{engine / plain:>8.1f}  {verdict:<4}  {kinds}")
    print(f"{misses} of {len(scenarios(model))} scenarios missed the target" if misses
          else "every scenario within the target")


if __name__ == "__main__":
    main()
