"""progress.Bar: a live tqdm bar on a terminal, only the kept lines in a log."""
import io

import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run_bar(stream, steps=50, keep_every=10):
    bar = progress.Bar(description="test", stream=stream)
    for step in range(1, steps + 1):
        bar.report(step, steps, f"step {step}/{steps}  loss {1 / step:.3g}", keep=step % keep_every == 0)
    bar.close()
    return stream.getvalue()


def test_in_a_log_the_bar_writes_only_the_kept_lines():
    lines = run_bar(io.StringIO()).splitlines(keepends=True)
    assert [line.split("  ")[0] for line in lines] == [f"step {n}/50" for n in (10, 20, 30, 40, 50)]
    assert all(line.endswith("\n") and "\r" not in line and "|" not in line for line in lines)
    assert all("elapsed, ETA" in line for line in lines)


def test_on_a_terminal_the_bar_is_live_and_kept_lines_stay():
    text = run_bar(Terminal())
    assert "\r" in text and "100%" in text  # the live bar, redrawn in place, reaches the end
    last = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    kept = [line.split("  ")[0] for line in last if "elapsed, ETA" in line and "|" not in line]
    assert kept == [f"step {n}/50" for n in (10, 20, 30, 40, 50)]


def test_the_eta_follows_the_share_of_work_done_where_steps_differ_in_cost(monkeypatch):
    """Coarse to fine: 100 quarter-size iterations done in 10 s, 10 full-size ones to go, each as
    costly as 16 of those: 16 s left, not the 1 s that counting iterations would say."""
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    work = 100 / 16 + 10
    for stream in (io.StringIO(), Terminal()):
        bar = progress.Bar(total=110, stream=stream)
        bar.update(0, "start", done=0.0)
        clock[0] += 10.0
        bar.update(100, "coarse done", keep=True, done=(100 / 16) / work)
        assert bar.timing() == "10.0s elapsed, ETA 16.0s"
        bar.close()
        clock[0] = 0.0
    live = [part for part in stream.getvalue().replace("\n", "\r").split("\r") if "|" in part][-1]
    assert "ETA 16.0s  coarse done" in live and "[, " not in live and "<" not in live


def test_a_count_that_goes_back_starts_a_new_pass():
    bar = progress.Bar(stream=io.StringIO())
    bar.report(8, 8, "first run", keep=True)
    bar.report(1, 4, "second run")
    assert bar.timing().endswith("ETA ?")  # timed afresh: one update is no pace yet
    bar.close()


def test_a_closed_stream_does_not_stop_the_run():
    stream = io.StringIO()
    bar = progress.Bar(total=2, stream=stream)
    stream.close()
    bar.update(1, "after the terminal closed", keep=True)  # no exception
    bar.close()
