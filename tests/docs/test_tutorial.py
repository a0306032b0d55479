"""docs/tutorial.md: every command in it runs, in order, and prints what the tutorial shows."""

from __future__ import annotations

from pathlib import Path

from .tutorial import blocks, normalise, problems, run_all


def test_every_tutorial_command_runs_and_prints_what_it_shows(tmp_path: Path) -> None:
    ran = run_all(tmp_path)
    assert len(ran) >= 7
    found = problems(ran, tmp_path)
    assert not found, "\n".join(found)
    assert (tmp_path / "runs" / "unet" / "bev.onnx").is_file()  # the verified export
    assert (tmp_path / "runs" / "unet-sensitivity" / "derived.yaml").is_file()


def test_the_checker_catches_wrong_output_a_wrong_exit_status_and_a_wrong_excerpt(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("```sh\nprintf 'took 1.5 s\\nkey: a\\n' > f.yaml; cat f.yaml\n```\n\n```text\ntook 20 s\n...\n"
                   "key: b\n```\n\n```sh\nfalse\n```\n\n```yaml f.yaml\nkey: a\nkey: c\n```\n")
    work = tmp_path / "work"
    work.mkdir()
    found = problems(run_all(work, path=doc), work, path=doc)
    assert len(found) == 3, found
    assert "'key: b'" in found[0] and "exit status 1" in found[1] and "'key: c'" in found[2]
    assert normalise("took 20 s") == normalise("took  1.5 s")  # numbers and spacing may vary, words may not
    assert any(b.kind == "text" and b.text.strip() for b in blocks())
