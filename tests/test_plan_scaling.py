"""Planning is linear in the number of classes: counted operations, not timings (a dry run of 10k classes took 24 s
and of 100k classes over 18 minutes while every class lookup scanned every manifest row)."""

from pathlib import Path

from medisyn_cli.dataset.manifest import Manifest, PromptRow
from medisyn_cli.generate.plan import iter_jobs, quotas


class Counted:
    """Counts how many elements of its containers are visited or looked up."""

    visits = 0


class CountingRows(tuple):
    def __iter__(self):
        for row in super().__iter__():
            Counted.visits += 1
            yield row


class CountingDict(dict):
    def __iter__(self):
        for key in super().__iter__():
            Counted.visits += 1
            yield key

    def __getitem__(self, key):
        Counted.visits += 1
        return super().__getitem__(key)


def manifest(classes: int, variants: int = 2, heavy: float = 1.0) -> Manifest:
    rows = [
        PromptRow(line, f"class_{c}", f"image {v} of class {c}", "", heavy if c == 0 else 1.0, "RGB")
        for line, (c, v) in enumerate(((c, v) for c in range(classes) for v in range(variants)), start=2)
    ]
    return Manifest(Path("m.csv"), "0" * 64, CountingRows(rows))


def dry_run_visits(classes: int, n_per_class: int = 3, heavy: float = 1.0) -> int:
    """What a dry run does with the manifest: classes, weights, quotas, each class's variants, the whole plan."""
    Counted.visits = 0
    plan = manifest(classes, heavy=heavy)
    weights = CountingDict(plan.weights())
    counts = CountingDict(quotas(weights, round(sum(weights.values())) + (n_per_class - 1) * classes))
    for label in plan.labels:
        assert len(plan.variants(label)) == 2
    jobs = sum(1 for _ in iter_jobs(plan, counts, seed=0))
    assert jobs == sum(dict.values(counts))
    return Counted.visits


def test_a_dry_run_visits_each_row_and_class_a_bounded_number_of_times():
    small, large = dry_run_visits(1000), dry_run_visits(2000)
    assert large <= 2.1 * small  # twice the classes, twice the work (a lookup that scans every row: 4x)
    assert large < 30 * 2000


def test_one_class_much_larger_than_the_others_costs_its_images_not_images_times_classes():
    small, large = dry_run_visits(500, heavy=2000), dry_run_visits(1000, heavy=2000)
    assert large <= 2.1 * small and large < 20 * (2000 + 3 * 1000)
