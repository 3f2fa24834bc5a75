"""Rank 0's progress output: live bar on a terminal, plain lines in batch logs."""

import io

from fednas_mpi.runtime.progress import Progress, _hms


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    p = Progress(3, stream=out)
    assert not p.live
    for r, acc in enumerate((0.5, float("nan"), 0.75)):
        loss = 1.0 if acc == acc else float("nan")
        p.update(r, {"global_acc": acc, "global_loss": loss, "round_time": 0.25})
    lines = out.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines] == ["1/3", "2/3", "3/3"]
    assert "acc 0.5000" in lines[0]
    assert "acc 0.5000  loss 1.0000" in lines[1]  # no evaluation: the last values repeat
    assert "acc 0.7500" in lines[2] and "0.25s/round" in lines[2] and "ETA 0:00:00" in lines[2]
    assert "\r" not in out.getvalue()


def test_live_bar_on_a_terminal_rewrites_one_line():
    out = Tty()
    p = Progress(4, start=2, stream=out)
    assert p.live
    p.update(2, {"global_acc": 0.9})
    p.update(3, {"global_acc": 0.95})
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "[##################------] round 3/4" in text
    assert "[########################] round 4/4" in text


def test_hms():
    assert _hms(0) == "0:00:00" and _hms(3725) == "1:02:05" and _hms(float("nan")) == "?"
