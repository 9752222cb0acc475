"""The plan: balanced quotas, stable per-image seeds and ids, interleaving, shards."""

import pytest

from medisyn_cli.core.batching import batched
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.names import safe_name
from medisyn_cli.dataset.manifest import load_manifest
from medisyn_cli.generate.plan import image_id, image_seed, iter_jobs, quotas


def test_quotas_are_balanced_and_sum_to_n():
    counts = quotas({"a": 1, "b": 1, "c": 1}, 10)
    assert sum(counts.values()) == 10
    assert max(counts.values()) - min(counts.values()) <= 1
    assert counts == {"a": 4, "b": 3, "c": 3}


def test_quotas_follow_weights():
    assert quotas({"a": 3, "b": 1}, 100) == {"a": 75, "b": 25}
    assert quotas({"a": 1, "b": 2, "c": 1}, 7) == {"a": 2, "b": 3, "c": 2}


def test_every_class_gets_an_image_even_with_tiny_weight():
    counts = quotas({"a": 1000, "b": 1}, 2)
    assert counts == {"a": 1, "b": 1}


@pytest.mark.parametrize(
    "n, message", [(0, "positive"), (-5, "positive"), (2, "smaller than the number of classes (3)")]
)
def test_bad_n_is_a_clear_error(n, message):
    with pytest.raises(MedisynError, match=message.replace("(", r"\(").replace(")", r"\)")):
        quotas({"a": 1, "b": 1, "c": 1}, n)


def test_seed_depends_on_run_seed_label_index_and_attempt_only():
    base = image_seed(0, "melanoma", 3)
    assert base == image_seed(0, "melanoma", 3)
    others = {
        image_seed(1, "melanoma", 3),
        image_seed(0, "nevus", 3),
        image_seed(0, "melanoma", 4),
        image_seed(0, "melanoma", 3, attempt=1),
    }
    assert base not in others and len(others) == 4
    assert 0 <= base < 2**63


def test_a_jobs_seeds_come_from_one_function_of_the_run_seed(manifest):
    m = load_manifest(manifest)
    job = next(iter_jobs(m, quotas(m.weights(), 3), seed=5))
    assert job.seed == job.attempt_seed(0) == image_seed(5, job.label, job.index)
    assert job.attempt_seed(2) == image_seed(5, job.label, job.index, 2) != job.seed


def test_jobs_are_interleaved_unique_and_use_variants_in_turn(manifest):
    m = load_manifest(manifest)
    counts = quotas(m.weights(), 9)
    jobs = list(iter_jobs(m, counts, seed=7))
    assert len(jobs) == 9 and len({j.id for j in jobs}) == 9
    assert [j.label for j in jobs[:3]] == m.labels
    melanoma = [j.prompt for j in jobs if j.label == "melanoma"]
    assert melanoma[0] != melanoma[1] and melanoma[0] == melanoma[2]
    assert jobs == list(iter_jobs(m, counts, seed=7))
    assert [j.seed for j in jobs] != [j.seed for j in iter_jobs(m, counts, seed=8)]


def test_a_larger_n_keeps_the_images_of_a_smaller_one(manifest):
    m = load_manifest(manifest)
    small = {(j.id, j.seed, j.prompt) for j in iter_jobs(m, quotas(m.weights(), 6), 0)}
    large = {(j.id, j.seed, j.prompt) for j in iter_jobs(m, quotas(m.weights(), 30), 0)}
    assert small <= large


def test_batched():
    assert list(batched(range(5), 2)) == [[0, 1], [2, 3], [4]]
    with pytest.raises(MedisynError, match="--batch-size"):
        list(batched(range(5), 0))


def test_safe_names_are_unique_and_keep_plain_labels():
    assert safe_name("melanoma") == "melanoma"
    assert safe_name("x ray/normal") != safe_name("x ray normal")
    assert "/" not in safe_name("a/../b") and not safe_name("..").startswith(".")
    assert image_id("melanoma", 12) == "melanoma-000012"
