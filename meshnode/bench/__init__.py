"""The benchmark suite: what meshnode costs next to bare grpcio (``meshnode bench``).

* :mod:`~meshnode.bench.plan`: variants, workloads and the settings of a run;
* :mod:`~meshnode.bench.runner`: the processes and the interleaved rounds;
* :mod:`~meshnode.bench.server` / :mod:`~meshnode.bench.client`: the server and
  load-generator processes (``python -m meshnode.bench.server ...``);
* :mod:`~meshnode.bench.load`: the load generator itself;
* :mod:`~meshnode.bench.rotation`: rotation under load with a dev agent;
* :mod:`~meshnode.bench.protocol`: how the runner talks to its processes;
* :mod:`~meshnode.bench.report`: targets, JSON and markdown.
"""

from meshnode.bench.plan import VARIANTS, BenchSettings, Variant
from meshnode.bench.report import evaluate_targets, markdown, write_report
from meshnode.bench.runner import run_bench

__all__ = ["VARIANTS", "BenchSettings", "Variant", "evaluate_targets", "markdown", "run_bench", "write_report"]
