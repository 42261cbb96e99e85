"""The CLI protocol: every command has a module with HELP, add_arguments and run; no command prints help."""
import importlib

from fastcas import cli


def test_every_cli_command_has_a_module_with_the_protocol():
    for name, module in cli.COMMANDS.items():
        mod = importlib.import_module(f"fastcas.cli.{module}")
        assert callable(mod.add_arguments) and callable(mod.run), name
        assert name in cli.SUMMARY


def test_cli_without_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "shard" in capsys.readouterr().out
