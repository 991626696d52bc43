"""Cost of ``ckpt.assert_manifest`` on LLaMA-shaped models built on the ``meta`` device.

Each config runs in a fresh child: ``import torch``, build ``Llama(config)`` under
``torch.device("meta")`` (timed separately), then time the manifest work of
``assert_manifest``: ``Manifest.from_module`` -> ``.render()`` -> ``Manifest.parse`` -> the
diff of ``parsed`` against ``manifest`` (``ModelFacts.from_module`` + ``diagnose``, what
``assert_manifest`` runs on a mismatch; ``diff_manifests`` in older trees). The syrupy
snapshot read is left out. ``first`` is the first call in the process, ``best`` the fastest
of ``--repeat`` more. Peak RSS is the child's whole-process VmHWM (also shown after
``import torch`` and after the build, which imports much of torch, sympy included).
Usage: python benchmarks/bench_manifest_meta.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("llama_7b", "llama_70b")
TARGET_WALL_S, TARGET_RSS_MIB = 1.5, 400.0


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def child(config_name: str, repeat: int) -> dict[str, Any]:
    start = time.perf_counter()
    import torch

    import_s, torch_rss = time.perf_counter() - start, status_mib("VmHWM")
    sys.path.insert(0, str(ROOT))
    from example_models.llama import Llama, LlamaConfig
    from pytest_ckpt.checkpoint.manifest import Manifest
    from pytest_ckpt.diagnosis import engine

    try:  # the facts-aware engine; older trees have diff_manifests(reference, current)
        from pytest_ckpt.checkpoint.facts import ModelFacts

        def diff(parsed: Any, manifest: Any) -> list[Any]:
            facts = ModelFacts.from_module(model)
            return list(engine.diagnose(parsed, manifest, facts=facts,
                                        reference_name="snapshot"))
        api = "ModelFacts.from_module + diagnose"
    except ImportError:
        def diff(parsed: Any, manifest: Any) -> list[Any]:
            return list(engine.diff_manifests(parsed, manifest))  # type: ignore[attr-defined]
        api = "diff_manifests"

    config = getattr(LlamaConfig, config_name)()
    start = time.perf_counter()
    with torch.device("meta"):
        model = Llama(config)
    build_s, built_rss = time.perf_counter() - start, status_mib("VmHWM")

    def assert_manifest_work() -> tuple[float, int, int]:
        start = time.perf_counter()
        manifest = Manifest.from_module(model)
        text = manifest.render()
        parsed = Manifest.parse(text)
        findings = diff(parsed, manifest)
        return time.perf_counter() - start, len(manifest), len(findings)

    first, entries, findings = assert_manifest_work()
    best = min(assert_manifest_work()[0] for _ in range(repeat))
    return {"import": import_s, "torch_rss": torch_rss, "build": build_s, "built_rss": built_rss,
            "first": first, "best": best, "api": api, "entries": entries, "findings": findings,
            "params": sum(p.numel() for p in model.parameters()), "peak": status_mib("VmHWM")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="warm calls (default 5)")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(child(options.child, options.repeat)))
        return 0
    print(f"targets: first assert_manifest work < {TARGET_WALL_S} s, whole-process peak RSS "
          f"< {TARGET_RSS_MIB:.0f} MiB (the 7B line is the target; 70B is extra)")
    header = (f"{'model (meta)':<14} {'params':>7} {'entries':>7} {'import torch s':>14} "
              f"{'build s':>7} {'first s':>7} {'':4} {'best s':>7} {'torch RSS':>9} "
              f"{'built RSS':>9} {'peak RSS MiB':>12} {'':4} {'findings':>8}")
    print(f"{header}\n{'-' * len(header)}")
    for name in CONFIGS:
        done = subprocess.run([sys.executable, __file__, "--child", name, "--repeat",
                               str(options.repeat)], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{name} child failed:\n{done.stderr}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        wall_ok = "ok" if r["first"] < TARGET_WALL_S else "MISS"
        rss_ok = "ok" if r["peak"] < TARGET_RSS_MIB else "MISS"
        print(f"{name:<14} {r['params'] / 1e9:>6.1f}B {r['entries']:>7} {r['import']:>14.2f} "
              f"{r['build']:>7.3f} {r['first']:>7.4f} {wall_ok:<4} {r['best']:>7.4f} "
              f"{r['torch_rss']:>9.0f} {r['built_rss']:>9.0f} {r['peak']:>12.0f} {rss_ok:<4} "
              f"{r['findings']:>8}")
    print(f"timed: Manifest.from_module -> render -> Manifest.parse -> {r['api']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
