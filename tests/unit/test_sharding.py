"""Shard splitting is a pure function of sizes: greedy, in order, oversized units alone, decimal units."""

import pytest

from llama4ctl.errors import PlanError
from llama4ctl.plan.sharding import parse_size, shard_file_names, split_sizes


@pytest.mark.parametrize("text, value", [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("200KB", 200_000),
                                         ("1.5GB", 1_500_000_000), ("1TB", 10**12), ("123", 123), (42, 42)])
def test_sizes_use_decimal_units_like_transformers(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["5GiB", "five", "", "-1GB", "0"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(PlanError):
        parse_size(text)


def test_greedy_in_order():
    assert split_sizes([6, 6, 2, 6, 2, 2], 10) == [[0], [1, 2], [3, 4, 5]]


def test_oversized_unit_gets_its_own_shard_without_reordering():
    assert split_sizes([2, 30, 3, 4], 10) == [[0], [1], [2, 3]]


def test_exact_fit_closes_the_shard():
    assert split_sizes([5, 5, 1], 10) == [[0, 1], [2]]


def test_everything_in_one_shard_when_it_fits():
    assert split_sizes([1, 2, 3], 100) == [[0, 1, 2]]
    assert shard_file_names(1) == ["model.safetensors"]


def test_shard_names_follow_transformers():
    assert shard_file_names(3) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
