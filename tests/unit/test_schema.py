"""Container schemas of training checkpoints (pure parts and real optimizers)."""

from __future__ import annotations

import random

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from pytest_ckpt.checkpoint.schema import Schema
from pytest_ckpt.diagnosis.schema_diff import diff_schemas

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=5))
containers = st.recursive(
    scalars | st.builds(torch.zeros, st.integers(0, 3)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12)


@given(containers)
def test_rendered_schema_parses_back(value):
    schema = Schema.of(value)
    assert Schema.parse(schema.render()) == schema


@given(containers)
def test_a_checkpoint_has_no_drift_against_itself(value):
    assert diff_schemas(Schema.of(value), Schema.of(value)) == []


def training_checkpoint() -> dict[str, object]:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "global_step": 10,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}


def test_schema_records_types_and_layout_not_values():
    rows = Schema.of(training_checkpoint()).as_dict()
    assert rows["model"] == "state_dict (4 tensors, 20 elements)"
    assert rows["optimizer.state"] == "dict[int] of 4"
    assert rows["optimizer.state[*].exp_avg"] == "tensor float32"
    assert rows["optimizer.param_groups[0].lr"] == "float"
    assert rows["optimizer.param_groups[0].params"] == "list[int] of 4"
    assert rows["scheduler.last_epoch"] == "int"
    assert rows["rng.torch"].startswith("tensor uint8 [")
    assert rows["rng.python[1]"] == "tuple[int] of 625"
    assert Schema.of(training_checkpoint()).container == "{'model': state_dict}"


def test_weights_only_checkpoint_given_to_a_resume_is_named():
    training = Schema.of(training_checkpoint())
    release = Schema.of(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)).state_dict())
    findings = diff_schemas(training, release)
    assert [f.kind for f in findings] == ["training_state", "training_state"]
    lost = findings[0]
    assert lost.keys == ("global_step", "model", "optimizer", "rng", "scheduler")
    assert "this looks like a weights-only checkpoint given to a training resume" in lost.hint
    assert findings[1].details == ("snapshot: {'model': state_dict}",
                                   "checkpoint: bare state_dict")


def test_dropped_scheduler_and_retyped_step_are_reported_at_the_top():
    before = training_checkpoint()
    after = dict(before, global_step=10.0)
    del after["scheduler"]
    lost, retyped = diff_schemas(Schema.of(before), Schema.of(after))
    assert lost.keys == ("scheduler",)  # not each of its fields
    assert lost.hint.startswith("top-level `scheduler` missing (present in the snapshot)")
    assert "weights-only" not in lost.hint  # the model and optimizer are still there
    assert retyped.details == ("global_step: int -> float",)


def _scheduler_state(**fields):
    return {"last_epoch": 3, "base_lrs": [0.1], "_last_lr": [0.1], "_step_count": 4, **fields}


@given(st.sampled_from(["", "scheduler", "lr_schedulers"]),
       st.dictionaries(st.sampled_from(["_is_initial", "_get_lr_called_within_step",
                                        "verbose", "default_min_lr", "_anneal_func_type"]),
                       st.booleans(), max_size=5))
def test_scheduler_private_fields_that_come_and_go_between_torch_versions_are_not_drift(
        where, private):
    def checkpoint(state):
        if where == "":
            return state
        return {where: [state] if where.endswith("s") else state, "epoch": 3}

    old = Schema.of(checkpoint(_scheduler_state(eta_min=0)))
    new = Schema.of(checkpoint(_scheduler_state(eta_min=0.0, **private)))
    assert old.without_torch_flags() == new.without_torch_flags()
    assert diff_schemas(old, new) == diff_schemas(new, new)


def test_a_scheduler_field_that_changes_meaning_is_still_drift():
    old = Schema.of({"scheduler": _scheduler_state(step_size=2)})
    new = Schema.of({"scheduler": _scheduler_state(milestones=[2, 4])})
    assert old.without_torch_flags() != new.without_torch_flags()
    retyped = Schema.of({"scheduler": _scheduler_state(step_size="2")})
    assert old.without_torch_flags() != retyped.without_torch_flags()
