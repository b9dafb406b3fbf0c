"""``python -m plmscreen.cli``: the plmscreen command."""

from plmscreen.cli.main import main

main()
