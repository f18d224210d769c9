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
    kept = [line.rsplit("\r", 1)[-1].split("  ")[0] for line in text.split("\n") if "elapsed, ETA" in line]
    assert kept == [f"step {n}/50" for n in (10, 20, 30, 40, 50)]


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
