"""common.partition (splitting one data set across partners) and common.data.synthetic."""

from __future__ import annotations

import numpy as np
import pytest

from common.data.text import TextDataset
from common.errors import ConfigError
from common.data.synthetic import LABELS, label_mix, synthetic_partner_data
from common.partition import partition_indices

DOMAINS = ("web", "news", "forum")


@pytest.fixture(scope="module")
def data():
    """60 rows, 3 labels, 3 domains interleaved (row i is in DOMAINS[i % 3])."""
    n = 60
    return TextDataset(tuple(f"text {i}" for i in range(n)), tuple((i // 3) % 3 for i in range(n)),
                       ("a", "b", "c"), tuple(DOMAINS[i % 3] for i in range(n)))


def _assert_disjoint_cover(parts, n):
    flat = [i for part in parts for i in part]
    assert len(flat) == len(set(flat)), "a row is in two partitions"
    assert sorted(flat) == list(range(n))


@pytest.mark.parametrize("k", [1, 3, 7])
def test_iid_is_a_balanced_disjoint_cover(data, k):
    parts = partition_indices(data, k, "iid", seed=1)
    assert len(parts) == k
    _assert_disjoint_cover(parts, len(data))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(isinstance(i, int) for p in parts for i in p)


def test_iid_is_deterministic_per_seed_and_shuffled(data):
    first = partition_indices(data, 3, "iid", seed=1)
    assert partition_indices(data, 3, "iid", seed=1) == first
    assert partition_indices(data, 3, "iid", seed=2) != first
    assert first[0] != list(range(20))  # not contiguous shards


def test_dirichlet_is_a_disjoint_cover(data):
    parts = partition_indices(data, 3, "dirichlet:0.5", seed=3)
    assert len(parts) == 3
    _assert_disjoint_cover(parts, len(data))
    assert partition_indices(data, 3, "dirichlet:0.5", seed=3) == parts


def test_column_gives_one_partition_per_domain_in_sorted_order(data):
    parts = partition_indices(data, 3, "column:domain", seed=0)
    # sorted domains: forum (rows 2, 5, ...), news (rows 1, 4, ...), web (rows 0, 3, ...)
    for i, domain in enumerate(sorted(DOMAINS)):
        assert parts[i] == [r for r in range(len(data)) if data.groups[r] == domain]
    assert parts[0][:3] == [2, 5, 8]
    _assert_disjoint_cover(parts, len(data))


def test_column_ignores_the_seed(data):
    assert (partition_indices(data, 3, "column:domain", seed=0)
            == partition_indices(data, 3, "column:domain", seed=99))


@pytest.mark.parametrize("k", [2, 4])
def test_column_with_another_partition_count_is_an_error(data, k):
    with pytest.raises(ConfigError, match=f"needs exactly 3 partners, not {k}"):
        partition_indices(data, k, "column:domain", seed=0)


def test_column_without_groups_is_an_error(data):
    plain = TextDataset(data.texts, data.labels, data.label_names)
    with pytest.raises(ConfigError, match="'domain'"):
        partition_indices(plain, 3, "column:domain", seed=0)


@pytest.mark.parametrize("k, spec", [(0, "iid"), (3, "dirichlet:-1"), (3, "rows")])
def test_bad_arguments_are_config_errors(data, k, spec):
    with pytest.raises(ConfigError):
        partition_indices(data, k, spec, seed=0)


def test_synthetic_data_is_deterministic():
    a = synthetic_partner_data(0, 50, seed=42)
    assert a == synthetic_partner_data(0, 50, seed=42)
    assert len(a) == 50 and a.label_names == LABELS
    assert all(isinstance(t, str) and t for t in a.texts)
    assert set(a.labels) <= set(range(len(LABELS)))
    assert synthetic_partner_data(0, 50, seed=43).texts != a.texts
    assert synthetic_partner_data(1, 50, seed=42).texts != a.texts


def test_partners_have_different_label_proportions():
    counts = [np.bincount(synthetic_partner_data(p, 400, seed=42).labels, minlength=4) / 400
              for p in range(2)]
    # partner p's majority label is p (mix [.5, .25, .15, .10] rotated by p)
    assert [int(np.argmax(c)) for c in counts] == [0, 1]
    assert np.abs(counts[0] - counts[1]).sum() > 0.5
    for p, c in enumerate(counts):
        np.testing.assert_allclose(c, label_mix(p), atol=0.08)
    np.testing.assert_array_equal(label_mix(1), [0.10, 0.5, 0.25, 0.15])
