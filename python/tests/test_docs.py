"""The examples of the docstrings and the README's Python example run as written."""

from __future__ import annotations

import doctest
import pathlib
import re

import pytest
import spaattn
import spaattn.attention
import spaattn.method
import spaattn.orders

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("module", [spaattn.attention, spaattn.method, spaattn.orders])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_readme_python_example(capsys):
    section = README.read_text().split("## Python", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(example, str(README), "exec"), {})
    assert "density" in capsys.readouterr().out
