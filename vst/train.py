"""`vst-train`: placeholder until issue #4 lands; the console script name is stable from now on."""

import sys


def main() -> None:
    sys.exit("vst-train: not implemented yet (tracked in issue #4)")
