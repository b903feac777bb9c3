"""The CLI's user-error type, apart from services.cli so that the subcommands' modules
(services.offline.simulate, services.offline.replay_cli) can raise it without importing the CLI
that imports them."""


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""
