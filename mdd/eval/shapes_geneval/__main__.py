"""`python -m mdd.eval.shapes_geneval`: the CLI of `runner.main`."""

from mdd.eval.shapes_geneval import runner

if __name__ == "__main__":
  runner.main()
