"""The engine on real transformers models (skipped without transformers) and on hand-written
key lists that follow the same rules (every lane): a head swap is one finding, prefixes are
whole key segments, shapes are compared only between keys that are the same parameter, an
absent component is named where it is absent, one rename is one finding, and a load
judged on values does not count equal constants (LayerNorm ones, zero biases) as loaded."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.manifest import Manifest, ManifestRow
from pytest_ckpt.checks.load_runs import LoadRun, run_load
from pytest_ckpt.checks.loads import declared_findings
from pytest_ckpt.diagnosis.engine import diagnose
from pytest_ckpt.diagnosis.findings import Finding, fix_for, render_failure

UPDATE = "pytest --ckpt-snapshot-update"
HEADLINE = "checkpoint ft.pt does not load into BertForSequenceClassification"
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 37, "vocab_size": 99}
HEAD_SWAP_FIX = ('fix: load the checkpoint into the base model (without a task head), or '
                 'declare both heads: allow_missing=["bert.pooler.*", "classifier.*"], '
                 'allow_unexpected=["cls.*"]')


def rendered(findings: list[Finding], headline: str = HEADLINE) -> list[str]:
    """The message as the checks render it: findings, then the fix line they choose."""
    return render_failure(headline, findings, fix_for(findings, UPDATE)).splitlines()


def head_swap_lines(shared: int, checkpoint_head: int) -> list[str]:
    return [
        HEADLINE,
        f"  [head_swap] {checkpoint_head + 4} keys: a head swap: the checkpoint holds another "
        f"task head than the model, on the same base ({shared} tensors shared)",
        f"      in the checkpoint only: `cls` ({checkpoint_head} tensors)",
        "      in the model only: `bert.pooler` (2 tensors), `classifier` (2 tensors)",
        HEAD_SWAP_FIX,
    ]


def renamed(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return {key.replace(old, new): value for key, value in state.items()}


# -- real transformers models ------------------------------------------------------------

@pytest.fixture(scope="module")
def bert() -> Any:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(**TINY)
    return {"mlm": transformers.BertForMaskedLM(config),
            "classifier": transformers.BertForSequenceClassification(config),
            "base": transformers.BertModel(config)}


def test_an_mlm_checkpoint_in_a_classifier_is_one_head_swap_with_the_declaration(bert):
    checkpoint, model = bert["mlm"].state_dict(), bert["classifier"]
    findings = diagnose(Manifest.from_state_dict(checkpoint), Manifest.from_module(model),
                        facts=ModelFacts.from_module(model))
    shared = len(set(checkpoint) & set(model.state_dict()))
    assert [finding.kind for finding in findings] == ["head_swap"]  # no [prefix], no [shape]
    assert rendered(findings) == head_swap_lines(shared, checkpoint_head=7)


def test_a_load_of_an_mlm_checkpoint_into_a_classifier_is_one_head_swap():
    """As assert_loads judges it: on values (LayerNorm ones and zero biases are in both
    heads and bodies), then the engine on what the load left out."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(**TINY)
    checkpoint = transformers.BertForMaskedLM(config).state_dict()
    model = transformers.BertForSequenceClassification(config)
    run = run_load(model, checkpoint, Manifest.from_state_dict(checkpoint))
    assert sorted(run.unexpected.keys()) == sorted(key for key in checkpoint
                                                   if key.startswith("cls."))
    gaps = Manifest(tuple(row for row in Manifest.from_module(model)
                          if row.key in run.not_written))
    findings = diagnose(run.unexpected, gaps, facts=ModelFacts.from_module(model))
    shared = len(set(checkpoint) & set(model.state_dict()))
    assert rendered(findings) == head_swap_lines(shared, checkpoint_head=7)


def test_a_load_diagnosed_on_its_gaps_names_the_pooler_not_all_of_bert(bert):
    """assert_loads gives the engine only what the load left out, and the model's facts."""
    model = bert["classifier"]
    gaps = Manifest(tuple(row for row in Manifest.from_module(model)
                          if row.key.startswith("bert.pooler.")))
    findings = diagnose(Manifest(()), gaps, facts=ModelFacts.from_module(model))
    assert rendered(findings)[1:-1] == [
        "  [missing_component] 2 keys: component `bert.pooler` (2 tensors) of the model is "
        "absent from the checkpoint (a partial checkpoint, e.g. a fine-tune that saved only "
        "what it trained)"]


def test_layer_norm_renamed_under_five_parents_is_one_rename(bert):
    checkpoint = bert["base"].state_dict()
    model = renamed(checkpoint, "LayerNorm", "layer_norm")
    findings = diagnose(Manifest.from_state_dict(checkpoint), Manifest.from_state_dict(model))
    assert rendered(findings)[1:] == [
        "  [rename] 10 keys: `LayerNorm` in the checkpoint is `layer_norm` in the model under 5 "
        "modules: embeddings, encoder.layer.{0,1}.attention.output, encoder.layer.{0,1}.output "
        "(same shapes and dtypes): rename the attribute back, or map the old keys in the load "
        "path",
        "      embeddings.LayerNorm.bias",
        "      embeddings.LayerNorm.weight",
        "      encoder.layer.{0,1}.attention.output.LayerNorm.bias",
        "      encoder.layer.{0,1}.attention.output.LayerNorm.weight",
        "      encoder.layer.{0,1}.output.LayerNorm.bias",
        "      encoder.layer.{0,1}.output.LayerNorm.weight",
        "      LayerNorm -> layer_norm: 10 keys",
        "fix: keep published checkpoints loading as the hints say; if this change is "
        f"intended, run: {UPDATE}",
    ]


def test_two_renamed_submodules_are_two_findings_one_per_cause(bert):
    checkpoint = bert["base"].state_dict()
    model = renamed(renamed(checkpoint, "attention.self.", "attention.attn."), ".dense.",
                    ".proj.")
    findings = diagnose(Manifest.from_state_dict(checkpoint), Manifest.from_state_dict(model))
    assert [finding.hint.split(" (same shapes")[0] for finding in findings] == [
        "encoder.layer.{0,1}.attention.self.* in the checkpoint is "
        "encoder.layer.{0,1}.attention.attn.* in the model",
        "`dense` in the checkpoint is `proj` in the model under 7 modules: "
        "encoder.layer.{0,1}.attention.output, encoder.layer.{0,1}.intermediate, "
        "encoder.layer.{0,1}.output, pooler",
    ]
    assert sum(len(finding.keys) for finding in findings) == len(
        set(checkpoint) - set(model))


# -- hand-written key lists (no transformers) --------------------------------------------

def rows(shapes: dict[str, tuple[int, ...]]) -> Manifest:
    return Manifest(tuple(ManifestRow(key, "float32", shape) for key, shape in shapes.items()))


BODY = {f"bert.encoder.layer.{i}.{name}.{leaf}": (8, 8) if leaf == "weight" else (8,)
        for i in range(2) for name in ("attention.self.query", "attention.output.dense",
                                       "output.dense")
        for leaf in ("weight", "bias")}
BODY |= {f"bert.{name}.LayerNorm.{leaf}": (8,)
         for name in ("embeddings", "encoder.layer.0.output", "encoder.layer.1.output")
         for leaf in ("weight", "bias")}
BODY["bert.embeddings.word_embeddings.weight"] = (99, 8)
MLM_HEAD = {"cls.predictions.bias": (99,), "cls.predictions.decoder.bias": (99,),
            "cls.predictions.decoder.weight": (99, 8),
            "cls.predictions.transform.dense.weight": (8, 8),
            "cls.predictions.transform.dense.bias": (8,)}
CLASSIFIER_HEAD = {"bert.pooler.dense.weight": (8, 8), "bert.pooler.dense.bias": (8,),
                   "classifier.weight": (2, 8), "classifier.bias": (2,)}


def test_two_heads_on_one_body_are_one_head_swap_and_no_shape_pairs():
    findings = diagnose(rows(BODY | MLM_HEAD), rows(BODY | CLASSIFIER_HEAD))
    assert [finding.kind for finding in findings] == ["head_swap"]
    assert findings[0].related == ()  # every key of both heads is in keys
    assert rendered(findings) == head_swap_lines(len(BODY), checkpoint_head=5)


def test_the_head_swap_of_a_load_diagnosed_on_its_gaps_names_the_pooler():
    gaps = rows(CLASSIFIER_HEAD)
    facts = ModelFacts(from_model=True, state_keys=frozenset(BODY | CLASSIFIER_HEAD))
    findings = diagnose(rows(MLM_HEAD), gaps, facts=facts)
    assert rendered(findings) == head_swap_lines(len(BODY), checkpoint_head=5)


def test_a_head_swap_against_a_snapshot_does_not_suggest_load_declarations():
    findings = diagnose(rows(BODY | MLM_HEAD), rows(BODY | CLASSIFIER_HEAD),
                        reference_name="snapshot")
    assert rendered(findings)[1:] == [
        f"  [head_swap] 9 keys: a head swap: the snapshot holds another task head than the "
        f"model, on the same base ({len(BODY)} tensors shared)",
        "      in the snapshot only: `cls` (5 tensors)",
        "      in the model only: `bert.pooler` (2 tensors), `classifier` (2 tensors)",
        "fix: keep published checkpoints loading as the hints say; if this change is "
        f"intended, run: {UPDATE}",
    ]


def test_the_pooler_missing_from_a_checkpoint_is_the_component_not_bert():
    facts = ModelFacts(from_model=True, state_keys=frozenset(BODY | CLASSIFIER_HEAD))
    gaps = rows({key: shape for key, shape in CLASSIFIER_HEAD.items()
                 if key.startswith("bert.pooler.")})
    (finding,) = diagnose(Manifest(()), gaps, facts=facts)
    assert finding.kind == "missing_component"
    assert finding.hint.startswith("component `bert.pooler` (2 tensors) of the model is absent")


def test_a_module_on_both_sides_with_other_members_is_not_an_absent_component():
    findings = diagnose(rows(BODY | {"proj.a": (3,), "proj.b": (3,)}),
                        rows(BODY | {"proj.c": (4,), "proj.d": (4,)}))
    assert [(finding.kind, finding.keys) for finding in findings] == [
        ("missing", ("proj.c", "proj.d")), ("unexpected", ("proj.a", "proj.b"))]


def test_keys_that_share_only_trailing_characters_are_not_a_prefix_or_a_shape_pair():
    body = {"encoder.weight": (4, 4), "encoder.bias": (4,)}
    findings = diagnose(rows(body | {"cls.predictions.decoder.weight": (99, 4),
                                     "cls.predictions.decoder.bias": (99,)}),
                        rows(body | {"classifier.weight": (2, 4), "classifier.bias": (2,)}))
    assert [finding.kind for finding in findings] == ["unexpected", "missing_component"]


def test_an_attribute_renamed_under_different_parents_is_one_rename_folding_the_parents():
    old = {"embeddings.LayerNorm.weight": (8,), "embeddings.LayerNorm.bias": (8,)}
    old |= {f"layer.{i}.{name}.LayerNorm.{leaf}": (8,) for i in range(3)
            for name in ("attention.output", "output") for leaf in ("weight", "bias")}
    new = {key.replace("LayerNorm", "layer_norm"): shape for key, shape in old.items()}
    (finding,) = diagnose(rows(old), rows(new))
    assert finding.kind == "rename"
    assert finding.hint == (
        "`LayerNorm` in the checkpoint is `layer_norm` in the model under 7 modules: "
        "embeddings, layer.{0..2}.attention.output, layer.{0..2}.output (same shapes and "
        "dtypes): rename the attribute back, or map the old keys in the load path")
    assert finding.details == ("LayerNorm -> layer_norm: 14 keys",)
    assert sorted(finding.related) == sorted(new)


def test_a_submodule_renamed_under_many_parents_names_four_and_counts_the_rest():
    old = {f"{parent}.dense.{leaf}": (4,) for parent in ("a", "b", "c", "d", "e", "f")
           for leaf in ("weight", "bias")}
    new = {key.replace(".dense.", ".proj."): shape for key, shape in old.items()}
    (finding,) = diagnose(rows(old), rows(new))
    assert finding.hint.startswith("`dense` in the checkpoint is `proj` in the model under 6 "
                                   "modules: a, b, c, d (and 2 more) (same shapes")


def test_a_renamed_layer_norm_is_not_loaded_and_not_reached_by_its_constant_values():
    """A LayerNorm starts as ones and zeros: a renamed one must not pass as loaded because
    another LayerNorm of the checkpoint holds the same values."""
    model = nn.ModuleDict({"norm": nn.LayerNorm(4), "other": nn.LayerNorm(4)})
    checkpoint = {"layer_norm.weight": torch.ones(4), "layer_norm.bias": torch.zeros(4),
                  "other.weight": torch.ones(4), "other.bias": torch.zeros(4)}
    run = run_load(model, checkpoint, Manifest.from_state_dict(checkpoint))
    assert run.not_written == ("norm.bias", "norm.weight")
    assert run.unexpected.keys() == ["layer_norm.bias", "layer_norm.weight"]
    assert torch.equal(model["norm"].weight, torch.ones(4))  # put back, not left poisoned


def test_a_stale_allow_unexpected_is_a_stale_declaration_not_a_missing_key():
    run = LoadRun(nn.Linear(2, 2), not_written=(), wrong_value=(), unexpected=Manifest(()))
    findings = declared_findings(run, {"weight", "bias"}, allow_missing=(),
                                 allow_unexpected=("cls.*",))
    assert [finding.kind for finding in findings] == ["stale_declaration"]
    assert rendered(findings, "checkpoint ft.pt does not load into Linear as declared") == [
        "checkpoint ft.pt does not load into Linear as declared",
        "  [stale_declaration] allow_unexpected='cls.*' is stale: it matches no unexpected "
        "checkpoint key; remove it from the declaration",
        "fix: remove 'cls.*' from allow_unexpected= (the load no longer needs it)",
    ]
