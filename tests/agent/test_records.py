"""The commit's `extra` records read the JSON commits have always carried and write it back unchanged."""

from __future__ import annotations

import json

import pytest

from agent.records import CommitExtra, LoopState, Progress, RecordError

# A commit's extra exactly as the training loop wrote it before the records existed (keys, shapes, order)
OLD_EXTRA = {
    "loop": {"format": 1, "config_digest": "3f2a9c0d11e4b7a8", "env_steps": 80, "updates": 96, "episodes": 11,
             "key": [1797259609, 2579123966], "train_mean": {"sums": {"loss": 1.5}, "counts": {"loss": 3}},
             "episode_mean": {"sums": {}, "counts": {}}, "last_return": None, "wall_time_s": 12.25,
             "metrics_bytes": 2048},
    "progress": {"env_steps": 80, "target_steps": 96, "updates": 96, "episodes": 11, "last_return": None,
                 "wall_time_s": 12.25, "steps_per_s": 6.5},
    "wandb_run_id": "r2i-0123456789ab",
    "device": "cpu:cpu:x1:cores=2",
}


def test_an_old_commits_extra_reads_and_writes_back_byte_for_byte() -> None:
    extra = CommitExtra.from_json(json.loads(json.dumps(OLD_EXTRA)))
    assert extra.loop.key == (1797259609, 2579123966) and extra.loop.env_steps == 80
    assert extra.progress == Progress(80, 96, 96, 11, None, 12.25, 6.5)
    assert extra.device == "cpu:cpu:x1:cores=2" and extra.wandb_run_id == "r2i-0123456789ab"
    assert json.dumps(extra.to_json()) == json.dumps(OLD_EXTRA)


def test_progress_alone_is_an_extra_of_an_entry_without_the_loop() -> None:
    obj = {"progress": OLD_EXTRA["progress"], "wandb_run_id": "bandit-0"}
    extra = CommitExtra.from_json(obj)
    assert extra.loop is None and extra.device is None and extra.to_json() == obj


@pytest.mark.parametrize("obj, match", [
    ({"progress": OLD_EXTRA["progress"]}, "extra lacks wandb_run_id"),
    ({**OLD_EXTRA, "progress": {"env_steps": 1}}, "extra.progress lacks target_steps"),
    ({**OLD_EXTRA, "loop": {**OLD_EXTRA["loop"], "format": 2}}, "format 2"),
    ({**OLD_EXTRA, "loop": [1, 2]}, "extra.loop must be a JSON object"),
    (None, "extra must be a JSON object"),
])
def test_an_extra_the_loop_did_not_write_is_an_error_naming_the_field(obj, match) -> None:
    with pytest.raises(RecordError, match=match):
        CommitExtra.from_json(obj)


def test_a_newer_writers_extra_keys_are_ignored() -> None:
    loop = LoopState.from_json({**OLD_EXTRA["loop"], "added_later": 1})
    assert loop.to_json() == OLD_EXTRA["loop"]
