"""The data protocol of ../shared/data/sni: what training may see, what validation and tests use."""

import json
from pathlib import Path

import pytest

from hypernet.data.sni import load_tasks, sample_tasks
from hypernet.errors import T2LError
from hypernet.settings import Settings


def write_data(root: Path) -> Path:
    """Three tasks of 10 instances and 6 descriptions: a, b train, v val, e eval."""
    tasks = root / "sni" / "tasks"
    tasks.mkdir(parents=True)
    for name in ("a", "b", "v", "e"):
        raw = {
            "descriptions": [f"{name} description {i}" for i in range(6)],
            "instances": [{"input": f"{name} in {i}", "output": f"{name} out {i}"} for i in range(10)],
        }
        (tasks / f"{name}.json").write_text(json.dumps(raw))
    splits = {
        "train": ["a", "b"],
        "val": ["v"],
        "eval": ["e"],
        "train_descriptions_per_task": 4,
        "test_instances": {"a": 3, "b": 2, "v": 4},
        "excluded": {"x": "degenerate"},
    }
    (root / "sni" / "splits.json").write_text(json.dumps(splits))
    return root


def test_training_sees_first_descriptions_and_no_test_instance(tmp_path):
    train = load_tasks(write_data(tmp_path), "train")
    assert [t.name for t in train] == ["a", "b"]
    a, b = train
    assert a.descriptions == [f"a description {i}" for i in range(4)]
    assert [i["input"] for i in a.instances] == [f"a in {i}" for i in range(7)]
    assert len(b.instances) == 8


def test_test_views_are_the_held_back_instances_under_unseen_paraphrases(tmp_path):
    data = write_data(tmp_path)
    a, b = load_tasks(data, "train-test")
    assert a.descriptions == ["a description 4", "a description 5"]
    assert [i["input"] for i in a.instances] == ["a in 7", "a in 8", "a in 9"]
    assert len(b.instances) == 2
    (v,) = load_tasks(data, "val-test")
    assert [i["input"] for i in v.instances] == [f"v in {i}" for i in range(6, 10)]
    train_inputs = {i["input"] for t in load_tasks(data, "train") for i in t.instances}
    test_inputs = {i["input"] for t in load_tasks(data, "train-test") for i in t.instances}
    assert not train_inputs & test_inputs


def test_validation_and_held_out_tasks_are_whole_and_never_in_training(tmp_path):
    data = write_data(tmp_path)
    (v,), (e,) = load_tasks(data, "val"), load_tasks(data, "eval")
    assert len(v.instances) == 10 and len(v.descriptions) == 6 and len(e.instances) == 10
    assert {"v", "e"}.isdisjoint(t.name for t in load_tasks(data, "train"))
    with pytest.raises(T2LError, match="no split 'excluded'"):
        load_tasks(data, "excluded")


def test_a_task_sample_is_fixed_by_its_seed():
    tasks = [str(i) for i in range(50)]
    first = sample_tasks(tasks, 10, seed=0)  # type: ignore[arg-type]
    assert first == sample_tasks(tasks, 10, seed=0) and len(first) == 10
    assert first != sample_tasks(tasks, 10, seed=1)
    assert first == sorted(first, key=int)  # in the split's order
    assert sample_tasks(tasks, None, seed=0) == tasks  # type: ignore[arg-type]


def test_the_shared_data_follows_the_protocol():
    data_dir = Settings().data_dir
    if not (data_dir / "sni" / "splits.json").is_file():
        pytest.skip(f"no SNI data at {data_dir}")
    train, val, held_out = (load_tasks(data_dir, s) for s in ("train", "val", "eval"))
    assert len(train) == 435 and len(val) == 20 and len(held_out) == 11
    names = [{t.name for t in split} for split in (train, val, held_out)]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert all(len(t.descriptions) == 128 and t.instances for t in train)
    splits = json.loads((data_dir / "sni" / "splits.json").read_text())
    for seen, unseen in zip(train, load_tasks(data_dir, "train-test"), strict=True):
        raw = json.loads((data_dir / "sni" / "tasks" / f"{seen.name}.json").read_text())
        k = splits["test_instances"][seen.name]
        assert len(unseen.instances) == k >= 3 and len(seen.instances) + k == len(raw["instances"])
        held = [{"input": i["input"], "output": i["output"]} for i in raw["instances"][-k:]]
        assert unseen.instances == held
        assert seen.descriptions + unseen.descriptions == raw["descriptions"]
