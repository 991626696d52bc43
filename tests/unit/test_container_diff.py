"""The container comparison behind ``pytest-ckpt diff`` of two training checkpoints (pure:
schemas and layouts of containers built in memory)."""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st

from pytest_ckpt.checkpoint.container import container_layout
from pytest_ckpt.checkpoint.schema import Schema
from pytest_ckpt.diagnosis.container_diff import Container, diff_containers

WEIGHTS = {"0.weight": torch.zeros(2, 2), "0.bias": torch.zeros(2)}
numbers = st.integers() | st.floats(allow_nan=False)
histories = st.lists(numbers, max_size=3)
states = st.dictionaries(st.sampled_from(["lr", "state"]), st.integers(), max_size=2)
# what one entry holds in two saves of one training run: values, lengths and a None
# placeholder change, the kind of entry does not
two_saves = st.dictionaries(
    st.sampled_from(["epoch", "optimizer", "history", "best", "config"]),
    st.one_of(st.tuples(numbers | st.none(), numbers | st.none()),
              st.tuples(histories, histories), st.tuples(states, states)),
    max_size=4)


def container(checkpoint: dict[str, Any], name: str) -> Container:
    layout = container_layout(checkpoint)
    assert layout is not None
    return Container(name, Schema.of(checkpoint), layout, frozenset(WEIGHTS))


@given(two_saves)
def test_containers_with_the_same_entries_of_the_same_kinds_do_not_differ(entries):
    a = container({"model": WEIGHTS, **{key: old for key, (old, _) in entries.items()}},
                  "checkpoint A")
    b = container({"model": WEIGHTS, **{key: new for key, (_, new) in entries.items()}},
                  "checkpoint B")
    assert diff_containers(a, b) == []


def test_an_entry_that_became_a_list_of_states_is_named_with_both_types():
    a = container({"model": WEIGHTS, "optimizer": {"state": {}, "param_groups": []}},
                  "checkpoint A")
    b = container({"model": WEIGHTS, "optimizer": [{"state": {}, "param_groups": []}]},
                  "checkpoint B")

    [finding] = diff_containers(a, b)

    assert finding.kind == "training_state"
    assert finding.hint == ("the entries beside the weights differ (1 of another type): a "
                            "resume written for one reads entries the other does not have")
    assert finding.details == ("['optimizer']: dict in checkpoint A, list of 1 in checkpoint B",)
