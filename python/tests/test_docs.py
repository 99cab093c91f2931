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


def test_readme_python_example_prints_what_the_readme_shows(capsys):
    section = README.read_text().split("## Python", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shown = re.search(r"It prints \(the tests check it\):\n\n```\n(.*?)```", section, re.S).group(1)
    exec(compile(example, str(README), "exec"), {})
    assert capsys.readouterr().out == shown


def test_readme_cpp_example_is_the_tested_one():
    """examples/readme_example.cpp (built and run by CTest and the consumer check) is the
    README's C++ example, and CTest expects the output the README shows."""
    root = README.parent
    section = README.read_text().split("## C++ API", 1)[1]
    example = re.search(r"```cpp\n(.*?)```", section, re.S).group(1)
    source = (root / "examples" / "readme_example.cpp").read_text()
    assert source.split("\n", 1)[1] == example
    shown = re.search(r"It prints `(.*?)`", section).group(1)
    cmake = (root / "tests" / "CMakeLists.txt").read_text()
    assert shown.replace(".", "\\\\.") in cmake  # CMake's regex escapes each dot as \\.
