"""The project's error type for problems with the input.

`InputError` (a `ValueError`) is raised for what a user can fix: a config
value, a file that cannot be used, a task, a workdir. The launches
(`launch/common.py`) print it as one line `error: ...` and exit with status
2; any other exception -- a bug, or a JAX error inside a compiled program
(often a `ValueError` too) -- keeps its traceback. A leaf module: it
imports nothing of the project, so every module can raise it.
`sampling/` imports nothing of `ttt/` and has its own
`sampling.trees.InstanceError`, which the launches treat the same way.
"""


class InputError(ValueError):
  """A problem with the input, its message naming the input and what is
  wrong (and, where there is one, the remedy)."""
