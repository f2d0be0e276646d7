"""``python -m cryostack`` runs the command line."""

from cryostack.cli.main import main

main()
