"""The book's infrastructure: presets and set-up, data sets, models, training,
populations, checkpoints, paths, plotting, progress bars, tables and the command line.

Any layer may use it; it uses none of them, so it sits beside the layers rather than on
top (its modules import only each other and :mod:`lib._checks`).
"""

# Loaded with the package, so that a chapter can write lib.book.data.load(...) after `import lib`.
from . import (batches, checkpoint, config, data, experiments, models, paths, plotting, population,  # noqa: F401
               progress, report, rules, runs, split, synthetic, train)
