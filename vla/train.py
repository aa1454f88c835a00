"""`vla-train`: placeholder until issue #5 lands; the console script name is stable from now on."""

import sys


def main() -> None:
    sys.exit("vla-train: not implemented yet (tracked in issue #5)")
