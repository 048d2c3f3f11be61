"""`python -m mdd.eval.shapes_geneval`: the CLI of `runner.main`, or with `--agreement` that of
`agreement.main` (the scorer against labels given by eye; see AGREEMENT.md)."""

import sys

from mdd.eval.shapes_geneval import runner


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  if "--agreement" in argv:
    from mdd.eval.shapes_geneval import agreement  # pylint: disable=g-import-not-at-top
    agreement.main([a for a in argv if a != "--agreement"])
  else:
    runner.main(argv)


if __name__ == "__main__":
  main()
