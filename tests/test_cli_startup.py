"""The CLI starts fast and speaks plainly (issue 6, items 10 and 13)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tempering.cli import main
from tests.conftest import ROOT


@pytest.mark.parametrize("argv", [["--help"], ["recipes"], ["plugins"], ["--version"],
                                  ["run", "--help"]])
def test_listing_commands_import_neither_torch_nor_lightning(argv: list[str]) -> None:
    code = "\n".join([
        "import sys", "from tempering.cli import main", "try:", f"    main({argv!r})",
        "except SystemExit:", "    pass",
        "print('HEAVY', [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules])"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout[-500:]


def test_version_and_plain_help(capsys) -> None:
    from tempering import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"tempering {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out


def test_preview_takes_options_and_overrides_in_any_order(capsys) -> None:
    assert main(["preview", "sft-quickstart", "-n", "1", "data.max_length=200"]) == 0
    assert capsys.readouterr().out.count("--- ") == 1
    with pytest.raises(SystemExit):
        main(["preview", "sft-quickstart", "-n", "1", "--bogus"])


def test_verbose_shows_the_traceback_of_a_user_error(capsys) -> None:
    from tempering.recipe import RecipeError

    assert main(["run", "no-such-recipe"]) == 2
    assert "no bundled recipe" in capsys.readouterr().err
    with pytest.raises(RecipeError):
        main(["-v", "run", "no-such-recipe"])


def test_readme_shows_the_bundled_tokenizer_for_check_template() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "check-template --tokenizer bundled:tiny-llama" in readme
