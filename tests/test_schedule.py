import pytest

from arceus.schedule import gpipe


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
