import pytest

from arceus.plan.schedule import gpipe


def test_gpipe_table():
    assert [str(a) for a in gpipe(0, 3, 4)] == ["F0", "F1", "F2", "F3", "B0", "B1", "B2", "B3", "STEP"]
    assert [str(a) for a in gpipe(2, 3, 1)] == ["F0", "B0", "STEP"]


def test_gpipe_every_microbatch_once_forward_before_backward():
    for m in range(1, 9):
        acts = gpipe(1, 3, m)
        fwd = [a.mb for a in acts if a.op == "F"]
        bwd = [a.mb for a in acts if a.op == "B"]
        assert fwd == bwd == list(range(m))
        assert acts[-1].op == "STEP"


@pytest.mark.parametrize(("stage", "stages", "m"), [(3, 3, 1), (-1, 3, 1), (0, 3, 0)])
def test_gpipe_rejects_bad_arguments(stage, stages, m):
    with pytest.raises(ValueError):
        gpipe(stage, stages, m)


def test_1f1b_tables():
    from arceus.plan.schedule import one_f_one_b

    table = {s: " ".join(map(str, one_f_one_b(s, 3, 4))) for s in range(3)}
    assert table == {
        0: "F0 F1 F2 B0 F3 B1 B2 B3 STEP",
        1: "F0 F1 B0 F2 B1 F3 B2 B3 STEP",
        2: "F0 B0 F1 B1 F2 B2 F3 B3 STEP",
    }
    assert " ".join(map(str, one_f_one_b(0, 4, 2))) == "F0 F1 B0 B1 STEP"  # M < D - s: all warm-up


def test_1f1b_bounds_in_flight_activations_where_gpipe_does_not():
    from arceus.plan.schedule import SCHEDULES, in_flight, one_f_one_b

    assert set(SCHEDULES) == {"gpipe", "1f1b"}
    for d in range(1, 6):
        for m in range(1, 10):
            for s in range(d):
                acts = one_f_one_b(s, d, m)
                assert [a.mb for a in acts if a.op == "F"] == [a.mb for a in acts if a.op == "B"] == list(range(m))
                assert in_flight(acts) == min(d - s, m)
                assert in_flight(gpipe(s, d, m)) == m
                # a backward never precedes its own forward
                seen = set()
                for a in acts:
                    if a.op == "F":
                        seen.add(a.mb)
                    elif a.op == "B":
                        assert a.mb in seen
