"""ktvtwist's trial tests: ``python -m twisted.trial tests``."""
