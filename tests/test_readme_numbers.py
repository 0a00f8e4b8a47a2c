"""README's numbers against the run (issue #29 item 3).

What is compared with what:
- README's generated blocks against the committed record ``docs/numbers/default.json``
  (written with README by ``python -m vgutils numbers --readme`` from the numbers a
  ``make figures`` run collected): cheap, default run;
- README's snippet, run now, against README's printout and the record: cheap (seconds),
  default run;
- the record's acceptance measures against the pinned model's, recomputed: slow (minutes).
The notebook times and the figure tables' numbers are not recomputed by a test (they need
a ``make figures`` run; times depend on the machine's load).
"""

import pytest

from vgutils import numbers


def committed() -> dict:
    return numbers.load(numbers.COMMITTED)


def test_readme_blocks_are_the_committed_numbers():
    text = numbers.README.read_text()
    record = committed()
    assert record["profile"] == "default"
    assert numbers.differences(text, record) == []
    assert set(numbers.readme_blocks(text)) == set(numbers.RENDERERS)


def test_readme_snippet_prints_what_readme_says():
    output = numbers.run_snippet(numbers.readme_snippet())
    blocks = numbers.readme_blocks(numbers.README.read_text())
    assert blocks["snippet-output"] == "```text\n" + output.rstrip("\n") + "\n```"
    fresh = {"numbers": numbers.snippet_numbers(output)}
    assert blocks["snippet-expect"] == numbers.render_snippet_expect(fresh)
    assert committed()["numbers"]["snippet.output"]["value"] == output


@pytest.mark.slow
def test_committed_acceptance_is_the_pinned_models():
    from vgutils.models import load_model
    from vgutils.teach.evaluate import acceptance

    record = committed()["numbers"]
    scenes = record["teach.scenes"]["value"]
    measures = acceptance(load_model(record["teach.model"]["value"], device="cpu"), scenes)
    for name, value in measures.items():
        assert record[f"teach.{name}"]["value"] == pytest.approx(value, abs=5e-4), name


def test_every_number_says_where_it_came_from():
    for key, entry in committed()["numbers"].items():
        assert set(entry) == {"value", "source"} and entry["source"], key


def test_readme_snippet_control_prints_chance():
    """README: "the random control (`tiny:llava`) prints 1.00 in every layer"."""
    code = numbers.readme_snippet()
    assert 'load_model("tiny:teach")' in code
    output = numbers.run_snippet(
        code.replace('load_model("tiny:teach")', 'load_model("tiny:llava")')
    )
    assert set(numbers.parse_snippet(output)["ratios"]) == {1.0}
    assert "prints 1.00 in every layer" in numbers.README.read_text()
