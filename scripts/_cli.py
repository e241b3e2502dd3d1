"""What every command-line script shares: one help format."""
import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every default shown (a switch's is "not given", not its field's value); the description as written."""

    def _get_help_string(self, action):
        if action.nargs == 0 and action.option_strings and action.default is not argparse.SUPPRESS:
            return (action.help or "") + " (default: not given)"
        if action.help is None or "default" in action.help:
            return action.help
        return super()._get_help_string(action)
