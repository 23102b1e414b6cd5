"""bench/reproduce.py: its points and the check of each finding against the numbers."""

import pytest

from bench import reproduce


def _named(**scores):
    names = {"q888": "qonly_8-8-8", "q228": "qonly_2-2-8", "d888": "dq_8-8-8", "d228": "dq_2-2-8",
             "d32": "dq_2-2-8_3-2", "d31": "dq_2-2-8_3-1", "w2a8": "tbt_W2A8", "w1a8": "tbt_W1A8",
             "w2a2": "tbt_W2A2", "w1a1": "tbt_W1A1"}
    rows = [{"point": "teacher", "distill": "teacher", "test_rougeLsum": scores.pop("teacher")}]
    return rows + [{"point": names[k], "distill": "x", "test_rougeLsum": v} for k, v in scores.items()]


def test_points_cover_the_papers_table():
    pts = {p.name: p.overrides for p in reproduce.points(3, 3)}
    assert list(pts) == ["qonly_8-8-8", "qonly_2-2-8", "dq_8-8-8", "dq_2-2-8", "dq_2-2-8_3-2", "dq_2-2-8_3-1",
                         "tbt_W2A8", "tbt_W1A8", "tbt_W2A2", "tbt_W1A1"]
    assert pts["qonly_2-2-8"]["distill.enabled"] == "False" and "distill.enabled" not in pts["dq_2-2-8"]
    assert pts["dq_2-2-8_3-1"]["student.layers"] == "3-1"
    assert (pts["tbt_W1A1"]["quant.method"], pts["tbt_W1A1"]["quant.act_bits"]) == ("tbt", "1")


@pytest.mark.parametrize("scores,expected", [
    (dict(teacher=60, q888=59.5, q228=40, d888=59.5, d228=55, d32=50, d31=30, w2a8=56, w1a8=50, w2a2=45, w1a1=30),
     [True, True, True, True, True]),
    # DQ 8-bit 2 points down; quant-only as good as DQ; a deeper student worse; TBT below DQ; W1A8 unusable
    (dict(teacher=60, q888=58, q228=55, d888=58, d228=55, d32=56, d31=30, w2a8=54, w1a8=40, w2a2=30, w1a1=20),
     [False, False, False, False, False]),
])
def test_findings_decide_each_claim_from_the_numbers(scores, expected):
    found = reproduce.findings(_named(**scores), "rougeLsum", 3, 3)
    assert [f["holds"] for f in found] == expected
    assert "teacher 60.00, DQ 8-8-8" in found[0]["detail"]


def test_findings_wait_for_unfinished_points():
    found = reproduce.findings(_named(teacher=60, d888=None, q228=40, d228=55), "rougeLsum", 3, 3)
    assert found[0]["holds"] is None and found[1]["holds"] is True
