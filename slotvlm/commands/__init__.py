"""Subcommands of the ``slotvlm`` CLI (see slotvlm/cli.py for the protocol)."""
