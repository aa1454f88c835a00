"""`vst-bench`: placeholder until issue #3 lands; the console script name is stable from now on."""

import sys


def main() -> None:
    sys.exit("vst-bench: not implemented yet (tracked in issue #3)")
