"""The error every `factory` subcommand may raise for bad input: the CLI prints its message
on one line and exits 2."""


class UsageError(Exception):
    pass
