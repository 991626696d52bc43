"""The ``example_models/`` suite is the demo: green as shipped, red with the cause when drifted."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import lines, snapshot_files


def _golden_files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("__goldens__/**/torch-*"))}


def test_example_suite_is_green(example_project, mode):
    before = snapshot_files(example_project.path)
    goldens = _golden_files(example_project.path)
    result = example_project.runpytest("example_models", *mode)
    result.assert_outcomes(passed=25, xfailed=2)
    assert snapshot_files(example_project.path) == before
    assert _golden_files(example_project.path) == goldens


def test_goldens_written_under_torch_2_1_and_2_13_both_load_under_this_torch(example_project):
    """Run in every CI lane: the 2.13 lane loads the 2.1 goldens and the 2.1 lane the 2.13
    ones, each written by really running the update under that torch."""
    goldens = _golden_files(example_project.path)
    assert {Path(name).name for name in goldens} == {
        "torch-2.1.pt", "torch-2.1.json", "torch-2.13.pt", "torch-2.13.json"}
    for name, data in goldens.items():
        if name.endswith(".json"):
            written_by = json.loads(data)["torch"]
            assert written_by.startswith(Path(name).stem.removeprefix("torch-") + ".")
    example_project.runpytest("example_models", "-k", "keep_loading or llama_roundtrips or survive",
                              "--ckpt-report=report.json").assert_outcomes(passed=3)
    report = json.loads((example_project.path / "report.json").read_text())
    loaded = {(check["test"].split("::")[1], check["check"]): check["outcome"]
              for check in report["checks"] if check["check"].startswith("golden")}
    assert loaded == {(test, f"golden[torch-{version}]"): "passed"
                      for test in ("test_published_gpt_heads_checkpoints_keep_loading",
                                   "test_tied_llama_roundtrips_with_shared_embeddings",
                                   "test_vocoder_outputs_survive_torch_and_safetensors")
                      for version in ("2.1", "2.13")}


def test_renaming_a_vocoder_layer_fails_every_vocoder_check_with_the_cause(example_project, mode):
    source = example_project.path / "example_models" / "vocoder.py"
    source.write_text(source.read_text().replace("conv_post", "conv_out"))
    result = example_project.runpytest("example_models/test_vocoder.py", *mode)
    result.assert_outcomes(failed=3, passed=5, xfailed=1)
    result.stdout.fnmatch_lines(lines(
        "manifest differs from snapshot example_models/__snapshots__/test_vocoder/"
        "test_vocoder_key_set_matches_snapshot.manifest.txt (60 entries in the snapshot, "
        "60 in the model)",
        "  [rename] 3 keys: conv_post.* in the snapshot is conv_out.* in the model (same shapes "
        "and dtypes): rename the attribute back, or map the old keys in the load path",
        "      conv_post.bias",
        "      conv_post.parametrizations.weight.original0",
        "      conv_post.parametrizations.weight.original1",
        "      conv_post -> conv_out: 3 keys",
        "fix: keep published checkpoints loading as the hints say; if this change is intended, "
        "run: pytest --ckpt-snapshot-update "
        "'example_models/test_vocoder.py::test_vocoder_key_set_matches_snapshot'",
    ))
    for version in ("2.1", "2.13"):  # the goldens written under each torch
        result.stdout.fnmatch_lines(lines(
            f"golden checkpoint torch-{version} (example_models/__goldens__/test_vocoder/"
            f"test_vocoder_outputs_survive_torch_and_safetensors/torch-{version}.pt, written "
            f"with torch {version}.*, pytest-ckpt 0.1.0) no longer loads into Vocoder as it "
            "did: rename (the load raised RuntimeError: Error(s) in loading state_dict for "
            "Vocoder)",
            "  [rename] 3 keys: conv_post.* in the golden is conv_out.* in the model (same "
            "shapes and dtypes): rename the attribute back, or map the old keys in the load "
            "path",
        ))


def test_switching_the_vocoder_to_legacy_weight_norm_is_caught(example_project):
    source = example_project.path / "example_models" / "vocoder.py"
    text = source.read_text()
    assert 'weight_norm: str = "parametrized"' in text
    source.write_text(text.replace('weight_norm: str = "parametrized"',
                                   'weight_norm: str = "legacy"'))
    result = example_project.runpytest("example_models/test_vocoder.py")
    result.stdout.fnmatch_lines(lines(
        "  [weight_norm_layout] 40 keys: weight_norm layout differs: snapshot parametrized "
        "(parametrizations.weight.original0/1) in 20 modules, model legacy (weight_g/weight_v); "
        "torch converts legacy -> parametrized only, never back*",
        "  [weight_norm_layout] checkpoints in the parametrized weight_norm layout "
        "(parametrizations.weight.original0/1) do not load into Vocoder through load_state_dict*",
    ))


def test_llama_vocab_change_is_a_vocabulary_resize_on_the_7b_meta_manifest(example_project):
    source = example_project.path / "example_models" / "llama.py"
    text = source.read_text()
    assert "vocab_size=32000" in text
    source.write_text(text.replace("vocab_size=32000", "vocab_size=32064"))
    result = example_project.runpytest("example_models/test_llama.py")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(lines(
        "  [shape] 2 keys: the vocabulary was resized: 32000 tokens in the snapshot, 32064 in "
        "the model (the model has 64 more tokens); load_state_dict raises 'size mismatch' on "
        "the embedding table and every head that follows it",
        "      output.weight",
        "      tok_embeddings.weight",
        "      output.weight: [32000, 4096] in the snapshot, [32064, 4096] in the model "
        "(dim 0: 32000 -> 32064)",
        "*",
        "fix: resize the model to 32000 tokens before loading (transformers: "
        "model.resize_token_embeddings(32000); or build it with vocab_size=32000), then resize "
        "to 32064 after loading (the 64 new rows start at their initial value); if this change "
        "is intended, run: pytest --ckpt-snapshot-update*",
    ))


def test_separator_that_stops_saving_its_scheduler_fails_the_resume_check(example_project):
    source = example_project.path / "example_models" / "separator.py"
    text = source.read_text()
    assert '"scheduler": state.scheduler.state_dict(), ' in text
    source.write_text(text.replace('"scheduler": state.scheduler.state_dict(), ', "").replace(
        'scheduler.load_state_dict(checkpoint["scheduler"])', "pass"))
    result = example_project.runpytest("example_models/test_training.py")
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(lines(
        "resumed training does not continue like the uninterrupted run (6 steps, saved and "
        "resumed after step 3)",
        "  [training_state] the learning rate diverged first at step 4: *; the scheduler state "
        "was never saved, so the LR schedule restarted",
    ))
