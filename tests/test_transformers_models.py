"""Real transformers models, tested as a transformers-based library would test them from the
README: tiny random-init BERT, GPT2 and Llama (tied embeddings), Wav2Vec2 (weight-normed
positional conv) and Encodec (weight_norm) round-trip in both formats and through
``save_pretrained``/``from_pretrained`` with no false positive; sharded ``save_pretrained``
directories are shown, diffed and loaded; each injected drift is named once."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tests.conftest import lines

TINY_MODELS = '''
import warnings

import torch
from transformers import (BertConfig, BertModel, EncodecConfig, EncodecModel, GPT2Config,
                          GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Wav2Vec2Config,
                          Wav2Vec2Model)

VOCAB = 99


def tiny_bert(**changes):
    return BertModel(BertConfig(**{**dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64), **changes}))


def tiny_gpt2():
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2,
                                      n_positions=64, tie_word_embeddings=True))


def tiny_llama():
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True))


def tiny_wav2vec2():
    return Wav2Vec2Model(Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        conv_dim=(16, 16), conv_kernel=(5, 3), conv_stride=(4, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2))


def tiny_encodec():
    return EncodecModel(EncodecConfig(
        target_bandwidths=[8.0], sampling_rate=8000, audio_channels=1, num_filters=4,
        hidden_size=16, num_residual_layers=1, upsampling_ratios=[4, 2], codebook_size=16,
        num_lstm_layers=1, norm_type="weight_norm"))


def built_on_old_torch(factory):
    """The model as torch < 2.1 builds it: transformers falls back to the legacy
    torch.nn.utils.weight_norm when torch has no parametrizations.weight_norm."""
    parametrized = torch.nn.utils.parametrizations.weight_norm
    del torch.nn.utils.parametrizations.weight_norm
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # legacy weight_norm is deprecated
            return factory()
    finally:
        torch.nn.utils.parametrizations.weight_norm = parametrized


def tokens():
    return {"input_ids": torch.randint(0, VOCAB, (2, 8))}


def waveform():
    return (torch.randn(1, 400),)


def audio():
    return (torch.randn(1, 1, 320),)


MODELS = {"bert": (tiny_bert, tokens), "gpt2": (tiny_gpt2, tokens),
          "llama": (tiny_llama, tokens), "wav2vec2": (tiny_wav2vec2, waveform),
          "encodec": (tiny_encodec, audio)}
'''

ROUNDTRIPS = '''
import pytest
from tiny_models import (MODELS, audio, tiny_bert, tiny_encodec, tiny_gpt2, tiny_llama,
                         tiny_wav2vec2, tokens, waveform)

BOTH = ("torch", "safetensors")


@pytest.mark.ckpt_roundtrip(formats=BOTH, inputs=tokens)
def test_bert():
    return tiny_bert()


@pytest.mark.ckpt_roundtrip(formats=BOTH, inputs=tokens)
def test_gpt2():
    return tiny_gpt2()


@pytest.mark.ckpt_roundtrip(formats=BOTH, inputs=tokens)
def test_llama():
    return tiny_llama()


@pytest.mark.ckpt_roundtrip(formats=BOTH, inputs=waveform)
def test_wav2vec2():
    return tiny_wav2vec2()


@pytest.mark.ckpt_roundtrip(formats=BOTH, inputs=audio)
def test_encodec():
    return tiny_encodec()


@pytest.mark.parametrize("name", MODELS)
def test_fixture(ckpt, name):
    factory, inputs = MODELS[name]
    ckpt.roundtrip(factory(), factory=factory, formats=BOTH, inputs=inputs)


@pytest.mark.parametrize("name", MODELS)
def test_save_pretrained(ckpt, name):
    factory, inputs = MODELS[name]
    ckpt.roundtrip(factory(), inputs=inputs, snapshot=False,
                   save_to=lambda model, folder: model.save_pretrained(folder),
                   load_from=lambda target, folder: type(target).from_pretrained(folder))
'''

SHARDED = '''
import pytest
from tiny_models import tiny_bert, tiny_llama

SAVES = {"safetensors": {}, "bin": {"safe_serialization": False}}


@pytest.mark.parametrize("factory", [tiny_bert, tiny_llama])
@pytest.mark.parametrize("serialization", SAVES)
def test_sharded(ckpt, tmp_path, factory, serialization):
    model = factory()
    model.save_pretrained(tmp_path / "single", **SAVES[serialization])
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB", **SAVES[serialization])
    assert len(list((tmp_path / "sharded").glob("*.index.json"))) == 1
    assert len([*(tmp_path / "sharded").glob("*-of-*")]) > 1
    name = f"{factory.__name__}_{serialization}"
    ckpt.assert_manifest(tmp_path / "single", name=name)
    ckpt.assert_manifest(tmp_path / "sharded", name=name)   # sharding changes no row
    ckpt.assert_loads(factory(), tmp_path / "sharded")
    ckpt.assert_loads(factory(), tmp_path / "sharded",
                      load_from=lambda target, folder: type(target).from_pretrained(folder))
'''

DRIFT = '''
import torch
from tiny_models import built_on_old_torch, tiny_bert, tiny_encodec, tiny_gpt2, tiny_wav2vec2


def saved(state, tmp_path):
    torch.save(state, tmp_path / "old.pt")
    return tmp_path / "old.pt"


def renamed(state, old, new):
    return {key.replace(old, new): value for key, value in state.items()}


def test_rename_layer_norm(ckpt, tmp_path):   # the old code called it layer_norm
    old = renamed(tiny_bert().state_dict(), "LayerNorm", "layer_norm")
    ckpt.assert_loads(tiny_bert(), saved(old, tmp_path))


def test_rename_encoder_layers(ckpt, tmp_path):   # the old code called it encoder.layers
    old = renamed(tiny_bert().state_dict(), "encoder.layer.", "encoder.layers.")
    ckpt.assert_loads(tiny_bert(), saved(old, tmp_path))


def test_shape_intermediate_size(ckpt, tmp_path):
    old = tiny_bert(intermediate_size=48).state_dict()
    ckpt.assert_loads(tiny_bert(), saved(old, tmp_path))


def test_shape_vocab_size(ckpt, tmp_path):
    ckpt.assert_loads(tiny_bert(), saved(tiny_bert(vocab_size=128).state_dict(), tmp_path))


def test_weight_norm_wav2vec2(ckpt, tmp_path):   # saved today, loaded where torch < 2.1
    old_torch_model = built_on_old_torch(tiny_wav2vec2)
    ckpt.assert_loads(old_torch_model, saved(tiny_wav2vec2().state_dict(), tmp_path))


def test_weight_norm_encodec(ckpt, tmp_path):
    old_torch_model = built_on_old_torch(tiny_encodec)
    ckpt.assert_loads(old_torch_model, saved(tiny_encodec().state_dict(), tmp_path))


def test_persistence_position_ids(ckpt, tmp_path):   # older transformers saved these buffers
    old = tiny_bert()
    for name in ("position_ids", "token_type_ids"):
        old.embeddings.register_buffer(name, getattr(old.embeddings, name), persistent=True)
    ckpt.assert_loads(tiny_bert(), saved(old.state_dict(), tmp_path))


def test_from_pretrained_untying_the_head(ckpt):
    ckpt.roundtrip(tiny_gpt2(), snapshot=False, save_to=lambda m, p: m.save_pretrained(p),
                   load_from=lambda t, p: type(t).from_pretrained(p, tie_word_embeddings=False))


def test_legacy_checkpoints_load_into_todays_models(ckpt, tmp_path):   # torch converts these
    for factory in (tiny_wav2vec2, tiny_encodec):
        old = saved(built_on_old_torch(factory).state_dict(), tmp_path)
        ckpt.assert_loads(factory(), old)
'''

GOLDEN = '''
import pytest
from tiny_models import tiny_bert, tokens


@pytest.mark.ckpt_roundtrip(inputs=tokens, golden=True, snapshot=False)
def test_bert_golden():
    return tiny_bert()
'''

COMMAND = shutil.which("pytest-ckpt", path=str(Path(sys.executable).parent))


def tiny_models() -> types.ModuleType:
    """``TINY_MODELS`` imported in this process, to compute what the runs must print."""
    module = types.ModuleType("tiny_models")
    exec(compile(TINY_MODELS, "tiny_models.py", "exec"), module.__dict__)
    return module


@pytest.fixture
def models_project(project: pytest.Pytester) -> pytest.Pytester:
    project.makepyfile(tiny_models=TINY_MODELS)
    return project


def failure_sections(result: pytest.RunResult) -> dict[str, str]:
    """Each failed test's section of the FAILURES report, by test name."""
    text = result.stdout.str().split("short test summary info")[0]
    parts = re.split(r"\n_{3,} (test_\S+) _{3,}\n", text)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def finding_labels(section: str) -> list[str]:
    return re.findall(r"^  \[(\w+)\] ", section, flags=re.MULTILINE)


def checks_by_test(report: Path) -> dict[str, dict[str, str]]:
    outcome: dict[str, dict[str, str]] = {}
    for check in json.loads(report.read_text())["checks"]:
        outcome.setdefault(check["test"].split("::")[-1], {})[check["check"]] = check["outcome"]
    return outcome


def test_tiny_transformers_models_and_their_sharded_folders_pass_with_no_false_positive(
        models_project, mode):
    models_project.makepyfile(test_models=ROUNDTRIPS, test_sharded=SHARDED)
    models_project.runpytest("--ckpt-snapshot-update", *mode).assert_outcomes(passed=19)
    snapshots = sorted(models_project.path.rglob("*.manifest.txt"))
    written = {path: path.read_bytes() for path in snapshots}
    assert len(snapshots) == 14  # marker and fixture: one per model; one per sharded folder

    result = models_project.runpytest("--ckpt-report=report.json", *mode)
    result.assert_outcomes(passed=19)
    assert {path: path.read_bytes() for path in snapshots} == written
    expected = {}
    for name in ("bert", "gpt2", "llama", "wav2vec2", "encodec"):
        weight_norm = {"roundtrip[weight_norm]": "passed"} if name in ("wav2vec2", "encodec") \
            else {}
        both = {"roundtrip[torch]": "passed", "roundtrip[safetensors]": "passed",
                "manifest": "passed", **weight_norm}
        expected.update({f"test_{name}": both, f"test_fixture[{name}]": both,
                         f"test_save_pretrained[{name}]": {"roundtrip[save_to]": "passed",
                                                           **weight_norm}})
    for name in ("bert", "llama"):
        for serialization in ("safetensors", "bin"):
            expected[f"test_sharded[{serialization}-tiny_{name}]"] = {
                f"manifest[tiny_{name}_{serialization}]": "passed", "loads": "passed"}
    assert checks_by_test(models_project.path / "report.json") == expected


@pytest.fixture(scope="module")
def pretrained_dirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_models.py and save_pretrained directories of its BERT and Llama, whole and
    sharded, in safetensors and .bin."""
    tmp_path = tmp_path_factory.mktemp("pretrained")
    (tmp_path / "tiny_models.py").write_text(TINY_MODELS)
    models = tiny_models()
    for name, model in (("bert", models.tiny_bert()), ("llama", models.tiny_llama())):
        for suffix, safe in (("", True), ("_bin", False)):
            model.save_pretrained(tmp_path / f"{name}{suffix}", safe_serialization=safe)
            model.save_pretrained(tmp_path / f"{name}_sharded{suffix}", max_shard_size="20KB",
                                  safe_serialization=safe)
    return tmp_path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert COMMAND is not None
    return subprocess.run([COMMAND, *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("suffix", ["", "_bin"], ids=["safetensors", "bin"])
def test_show_of_a_sharded_directory_lists_every_tensor_of_every_shard(pretrained_dirs, suffix):
    folder = f"bert_sharded{suffix}"
    index = json.loads(next((pretrained_dirs / folder).glob("*.index.json")).read_text())
    assert len(set(index["weight_map"].values())) > 1
    state = tiny_models().tiny_bert().state_dict()
    numel = sum(tensor.numel() for tensor in state.values())
    result = run_cli("show", folder, cwd=pretrained_dirs)
    assert result.returncode == 0, result.stderr
    shown = result.stdout.splitlines()
    assert shown[0].startswith(f"{folder}: ")
    assert f"{len(state)} entries, {numel:,} elements" in shown[0]
    rows = [f"{key} float32 [{','.join(map(str, tensor.shape))}] tensor"
            for key, tensor in sorted(state.items())]
    start = shown.index(f"# pytest-ckpt manifest v1: {len(state)} entries, {numel:,} elements")
    assert sorted(shown[start + 1:]) == sorted(rows)


@pytest.mark.parametrize("suffix", ["", "_bin"], ids=["safetensors", "bin"])
@pytest.mark.parametrize("name", ["bert", "llama"])
def test_diff_of_a_sharded_directory_against_the_whole_one_is_clean(pretrained_dirs, name,
                                                                     suffix):
    sharded = f"{name}_sharded{suffix}"
    result = run_cli("diff", f"{name}{suffix}", sharded, cwd=pretrained_dirs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"compatible: {name}{suffix} and {sharded} have the same ")


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_diff_of_a_sharded_directory_against_its_model_factory_is_clean(pretrained_dirs, name):
    # safetensors: save_pretrained keeps one key of each tied group, as safetensors does
    result = run_cli("diff", f"{name}_sharded", f"tiny_models:tiny_{name}", cwd=pretrained_dirs)
    assert result.returncode == 0, result.stdout + result.stderr


def test_diff_names_a_layer_norm_rename_once(pretrained_dirs):
    from safetensors.torch import save_file

    state = tiny_models().tiny_bert().state_dict()
    save_file({key.replace("LayerNorm", "layer_norm"): value for key, value in state.items()},
              str(pretrained_dirs / "old.safetensors"))
    result = run_cli("diff", "old.safetensors", "tiny_models:tiny_bert", cwd=pretrained_dirs)
    assert result.returncode == 1
    assert finding_labels(result.stdout) == ["rename"], result.stdout
    assert f"[rename] {sum('LayerNorm' in key for key in state)} keys: " in result.stdout


def resized_by_intermediate_size() -> int:
    models = tiny_models()
    old, new = models.tiny_bert().state_dict(), models.tiny_bert(intermediate_size=48)
    return sum(new.state_dict()[key].shape != tensor.shape for key, tensor in old.items())


def weight_normed(model: torch.nn.Module) -> int:
    return sum(hasattr(module, "parametrizations") for module in model.modules())


def test_each_injected_drift_in_a_real_model_is_named_once(models_project, mode):
    models_project.makepyfile(test_drift=DRIFT)
    result = models_project.runpytest(*mode)
    sections = failure_sections(result)
    models = tiny_models()
    bert = models.tiny_bert().state_dict()
    weight_norm = "[weight_norm_layout] {} keys: weight_norm layout differs: checkpoint " \
                  "parametrized (parametrizations.weight.original0/1) in {} module*, model " \
                  "legacy (weight_g/weight_v)*"
    expected = {
        "test_rename_layer_norm": [f"[rename] {sum('LayerNorm' in k for k in bert)} keys: "
                                   "*LayerNorm*"],
        "test_rename_encoder_layers": [f"[rename] {sum('encoder.layer.' in k for k in bert)} "
                                       "keys: encoder.layers.* in the checkpoint is "
                                       "encoder.layer.* in the model (same shapes and dtypes)*"],
        "test_shape_intermediate_size": [f"[shape] {resized_by_intermediate_size()} keys: "
                                         "shape differs*"],
        "test_shape_vocab_size": ["[shape] 1 key: the vocabulary was resized: 128 tokens in the "
                                  "*, 99 in the model (* has 29 more tokens)*"],
        **{f"test_weight_norm_{name}": [weight_norm.format(2 * count, count)]
           for name, count in (("wav2vec2", weight_normed(models.tiny_wav2vec2())),
                               ("encodec", weight_normed(models.tiny_encodec())))},
        "test_persistence_position_ids": ["[buffer_persistence] 2 keys: a non-persistent "
                                          "buffer in the model (persistent=False) that the "
                                          "checkpoint still holds*"],
        "test_from_pretrained_untying_the_head": [  # one cause, one finding
            "[tied_weights] 1 key: not in the saved file because it is tied to a key the file "
            "keeps (safetensors stores one key per tied group), and the loaded model does not "
            "re-tie it, so it keeps its initial value"],
    }
    named = {test: finding_lines(sections.get(test, "")) for test in expected}
    wrong = {test: found for test, found in named.items() if not matching(found, expected[test])}
    assert not wrong, "\n".join(f"{test}: expected {expected[test]}, printed {found}"
                                 for test, found in wrong.items())
    result.assert_outcomes(failed=len(expected), passed=1)  # the legacy checkpoints load


def finding_lines(section: str) -> list[str]:
    """The first line of each finding of a failure section (its label and hint)."""
    return re.findall(r"^  (\[\w+\] .*)$", section, flags=re.MULTILINE)


def matching(found: list[str], patterns: list[str]) -> bool:
    return len(found) == len(patterns) and all(
        fnmatch.fnmatchcase(line, lines(pattern)[0]) for line, pattern in zip(
            found, patterns, strict=True))


def test_a_golden_of_a_real_model_names_the_changed_intermediate_size(models_project, mode):
    models_project.makepyfile(test_golden=GOLDEN)
    models_project.runpytest("--ckpt-snapshot-update", *mode).assert_outcomes(passed=1)
    source = models_project.path / "tiny_models.py"
    source.write_text(source.read_text().replace("intermediate_size=37", "intermediate_size=48"))
    result = models_project.runpytest(*mode)
    result.assert_outcomes(failed=1)
    section = failure_sections(result)["test_bert_golden"]
    assert finding_labels(section) == ["shape"], section
    pytest.LineMatcher(section.splitlines()).fnmatch_lines(lines(
        "golden checkpoint torch-2.* no longer loads into BertModel as it did: shape *",
        f"  [shape] {resized_by_intermediate_size()} keys: shape differs*",
        "      encoder.layer.0.intermediate.dense.weight: [37, 32] in the golden, [48, 32] in "
        "the model (dim 0: 37 -> 48)",
    ))
