"""``python -m polyray.cli`` runs the ``polyray`` command."""

from polyray.cli import entry

entry()
