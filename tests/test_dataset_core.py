import pytest
import torch

from circuit_reuse.datasets import DatasetError, from_records, load_dataset, save_dataset


def _record(tokens, corrupted, answer=7, wrong=8, **extra):
    return {
        "clean_tokens": tokens,
        "corrupted_tokens": corrupted,
        "answer": answer,
        "wrong": wrong,
        "positions": {"END": len(tokens) - 1, "A": 0},
        "spans": {"all": [0, len(tokens)]},
        **extra,
    }


def test_round_trip_pads_right_and_keeps_positions(tmp_path):
    records = [_record([1, 2, 3], [1, 5, 3], text="a"), _record([4, 5], [6, 5], answer=9, wrong=10, text="b")]
    path = save_dataset(tmp_path / "toy.jsonl", records, {"task": "toy", "seed": 0, "pad_token_id": 0})
    dataset = load_dataset(path)
    assert dataset.task == "toy" and len(dataset) == 2
    assert dataset.clean_tokens.tolist() == [[1, 2, 3], [4, 5, 0]]
    assert dataset.corrupted_tokens.tolist() == [[1, 5, 3], [6, 5, 0]]
    assert dataset.answer_tokens.tolist() == [[7, 8], [9, 10]]
    assert dataset.end.tolist() == [2, 1]
    assert dataset.spans["all"].tolist() == [[0, 3], [0, 2]]
    assert dataset.records[1]["text"] == "b"
    assert (tmp_path / "toy.meta.json").is_file()


def test_subset_by_slice_indices_and_mask():
    dataset = from_records("toy", [_record([i, i + 1], [i, i + 2], answer=i) for i in range(5)])
    assert dataset.subset(slice(1, 3)).answer_tokens[:, 0].tolist() == [1, 2]
    assert dataset.subset([4, 0]).answer_tokens[:, 0].tolist() == [4, 0]
    mask = torch.tensor([True, False, True, False, False])
    assert dataset.subset(mask).positions["A"].tolist() == [0, 0]


def test_malformed_records_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="no prompts"):
        from_records("toy", [])
    bad = _record([1, 2, 3], [1, 2, 3])
    bad["positions"]["END"] = 1
    with pytest.raises(DatasetError, match="END must be the last clean token"):
        save_dataset(tmp_path / "bad.jsonl", [bad], {"task": "toy"})
    assert not (tmp_path / "bad.jsonl").exists()
    with pytest.raises(DatasetError, match="lacks answer"):
        from_records("toy", [{k: v for k, v in _record([1], [1]).items() if k != "answer"}])
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "missing.jsonl")
