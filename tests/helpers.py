"""Helpers shared by the CLI tests: a config file from a tree, and the one-line-error check."""

import yaml

from kdlab.cli.main import main


def write(tmp_path, tree, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def one_line_error(capsys, argv):
    """Run the CLI, expecting exit code 2 and a single stderr line; returns that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("kdlab") and "Traceback" not in err
    return err
