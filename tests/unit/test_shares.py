"""How the supervisor replicas divide the results partitions (services/supervisor/shares.py)."""

from services.supervisor.shares import assigned


def test_the_live_replicas_divide_every_partition_between_them_without_overlap():
    members = ["supervisor-3", "supervisor-12", "supervisor-7"]
    shares = [assigned(members, me, 8) for me in members]
    assert set().union(*shares) == set(range(8))
    assert sum(len(s) for s in shares) == 8
    assert sorted(len(s) for s in shares) == [2, 3, 3]


def test_one_replica_reads_everything_and_replicas_past_the_partitions_stand_by():
    assert assigned(["a"], "a", 4) == {0, 1, 2, 3}
    assert assigned([], "a", 1) == {0}  # (before its own beat is seen: itself counts)
    two = ["a", "b"]
    assert assigned(two, "a", 1) == {0} and assigned(two, "b", 1) == set()
