"""``python -m tagifai_api``: the command line."""

from tagifai_api.cli import main

main()
