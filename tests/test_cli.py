"""Help texts of the ``rsna`` command."""

import argparse

import pytest

from rsna.cli import SUBCOMMANDS, build_parser


def _subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_is_plain_text(name):
    text = _subcommand_parsers()[name].format_help()

    assert "`" not in text
    assert ":func:" not in text
    assert ":data:" not in text
    assert f"usage: rsna {name}" in text


def test_predict_help_names_params_keys():
    lines = _subcommand_parsers()["predict"].format_help().splitlines()
    description = lines[lines.index("") + 1]
    text = "\n".join(lines)

    assert description == "Score DICOM series folders with a trained checkpoint."
    assert "evaluate.tta_flip" in text
    assert "--no-tta-flip" in text
