"""`factory export` and `factory serve` subcommands (issue 4)."""


def register(sub) -> None:
    """Add the export/serve subparsers to the `factory` CLI's subparsers object."""
