"""Outputs replaced as one step (common.atomic.ReplacedOutputs), with real files and real signals: an earlier
analysis comes back whole whatever cuts the new one short, a second Ctrl-C or SIGTERM during that clean-up included."""
import os
import signal
from pathlib import Path

import pytest

from common.atomic import ReplacedOutputs, uninterrupted
from common.cli import Interrupted, Terminated, sigterm_stops_cleanly

EARLIER = {"report.md": b"the earlier report\n", "run-a/dimensions.csv": b"dim,r2\n0,0.5\n",
           "run-a/betas.png": b"\x89PNG earlier", "run-b/report.md": b"run b\n"}


def tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def earlier_analysis(out: Path) -> dict[str, bytes]:
    for name, data in EARLIER.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    (out / "notes.txt").write_bytes(b"mine, not an output\n")
    return tree(out)


@pytest.mark.parametrize("kind", [Interrupted, Terminated])
@pytest.mark.parametrize("when", ["setting the earlier files aside", "putting them back"])
def test_a_signal_during_the_renames_waits_until_the_earlier_analysis_is_whole(tmp_path, monkeypatch, kind, when):
    """Ctrl-C pressed twice, or SIGTERM after a Ctrl-C: the second signal came in the middle of the clean-up, which
    stopped with earlier files still set aside (and the next run deletes that folder); one that came between moving
    a file aside and recording it had it deleted with the folder. Now it is held until the renames are done."""
    out = tmp_path / "out"
    earlier = earlier_analysis(out)
    rename, renames = os.replace, []

    def rename_then_signal(source, target):  # the signal comes as each file is moved, before Python goes on
        rename(source, target)
        renames.append(Path(target).name)
        if (when == "putting them back") == (ReplacedOutputs.PREFIX in str(source)):
            signal.raise_signal(kind.signum)

    monkeypatch.setattr(os, "replace", rename_then_signal)
    with pytest.raises(kind), sigterm_stops_cleanly():
        with ReplacedOutputs(out) as outputs:
            outputs.set_aside(list(EARLIER))
            (out / "report.md").write_bytes(b"the new report, half writ")
            (out / "run-a").mkdir()
            (out / "run-a" / "dimensions.csv").write_bytes(b"new")
            raise Interrupted()  # the first Ctrl-C, as the new analysis is written
    monkeypatch.undo()
    assert renames  # the signal came during the renames
    assert tree(out) == earlier  # byte for byte, and nothing of the new analysis
    assert not list(out.glob(".*"))  # nor the folder the earlier files were set aside in


def test_a_held_signal_reaches_the_handler_in_place_before_and_an_unsignalled_block_raises_nothing():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with uninterrupted():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM]  # once, after the block
        with uninterrupted():
            pass
        assert seen == [signal.SIGTERM] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
