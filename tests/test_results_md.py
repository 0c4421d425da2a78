"""A benchmark script rewrites only its generated block of a results file; the hand-written analysis stays."""

from __future__ import annotations

from benchmarks.results_md import markers, write_generated


def test_generated_block_is_replaced_and_the_prose_kept(tmp_path):
    path = tmp_path / "results" / "speed.md"
    write_generated(path, "benchmarks/speed.py tables", "| a |\n| 1 |\n")
    begin, end = markers("benchmarks/speed.py tables")
    assert path.read_text() == f"{begin}\n| a |\n| 1 |\n{end}\n"
    path.write_text("Intro by hand.\n\n" + path.read_text() + "\nAnalysis by hand: 1 is small.\n")
    write_generated(path, "benchmarks/speed.py --cores", "| cores |\n")  # a second block is appended
    write_generated(path, "benchmarks/speed.py tables", "| a |\n| 2 |\n")  # the first is replaced in place
    text = path.read_text()
    assert text.startswith("Intro by hand.\n\n" + begin + "\n| a |\n| 2 |\n" + end + "\n\nAnalysis by hand: 1 is small.\n")
    assert "| 1 |" not in text and text.count(begin) == 1
    assert text.rstrip().endswith(markers("benchmarks/speed.py --cores")[1])
