"""``python -m wbsafe.cli``."""

from wbsafe.cli import main

main()
