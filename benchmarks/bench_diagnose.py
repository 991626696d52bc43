"""Diagnose two 100k-key manifests (target: < 0.5 s), against the plain set difference a
hand-written check would do; then ``ckpt.assert_manifest`` of a 100k-entry state_dict (meta
tensors) inside pytest, matching its snapshot and drifting from it, in fresh children.

    python benchmarks/bench_diagnose.py [--keys 100000] [--repeat 5] [--skip-pytest]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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


# The state_dict of the test (meta tensors: no memory) under each drift, by BENCH_DRIFT;
# the snapshot is recorded from "none". The test writes the seconds assert_manifest took.
TEST_FILE = f"""
import json, os, time
import pytest
import torch

LEAVES = {LEAVES!r}


def key(layer, leaf):
    drift = os.environ["BENCH_DRIFT"]
    name = f"decoder.layers.{{layer}}.{{leaf}}"
    if drift == "prefix":
        return "module." + name
    return name.replace(".q.", ".query.") if drift == "rename" else name


def test_manifest(ckpt):
    layers = int(os.environ["BENCH_KEYS"]) // len(LEAVES)
    kept = range(0, layers, 2) if os.environ["BENCH_DRIFT"] == "half" else range(layers)
    state = {{key(layer, leaf): torch.empty(64, 64, dtype=torch.bfloat16, device="meta")
              for layer in kept for leaf in LEAVES}}
    start = time.perf_counter()
    try:
        ckpt.assert_manifest(state)
    finally:
        with open(os.environ["BENCH_OUT"], "w") as out:
            json.dump(time.perf_counter() - start, out)
"""
DRIFTS = {"none": "matches its snapshot",
          "prefix": "'module.' on every key (fails)",
          "rename": "q -> query on every layer (fails)",
          "half": "half the layers absent (fails)"}


def assert_manifest_seconds(folder: Path, keys: int, drift: str, *update: str) -> float:
    out = folder / "seconds.json"
    env = {**os.environ, "BENCH_KEYS": str(keys), "BENCH_DRIFT": drift, "BENCH_OUT": str(out)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", "test_bench.py", *update], cwd=folder, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1) or not out.is_file():
        raise SystemExit(f"the assert_manifest child failed ({done.returncode}):\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    seconds: float = json.loads(out.read_text())
    out.unlink()
    return seconds


def assert_manifest_table(keys: int, repeat: int) -> None:
    print(f"\nckpt.assert_manifest of a {keys:,}-entry state_dict inside pytest (the call "
          f"only), median of {repeat} fresh children")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "test_bench.py").write_text(TEST_FILE)
        assert_manifest_seconds(folder, keys, "none", "--ckpt-snapshot-update")
        runs: dict[str, list[float]] = {drift: [] for drift in DRIFTS}
        for _ in range(repeat):
            for drift in DRIFTS:
                runs[drift].append(assert_manifest_seconds(folder, keys, drift))
    match = statistics.median(runs["none"])
    print(f"{'model against its snapshot':<40}{'seconds':>9}{'x match':>9}")
    for drift, label in DRIFTS.items():
        seconds = statistics.median(runs[drift])
        print(f"{label:<40}{seconds:>9.3f}{seconds / match:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-pytest", action="store_true",
                        help="only the engine; no assert_manifest children")
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
    if not args.skip_pytest:
        assert_manifest_table(args.keys, args.repeat)


if __name__ == "__main__":
    main()
