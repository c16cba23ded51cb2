"""Benchmarks and evaluations of fedarches, on real data; ``python -m fedarches.bench COMMAND`` (:mod:`.cli`).

Run from a source checkout: the data sets are ``../shared/data`` beside the repository and ``data/demo``
(:mod:`.paths`), the documents ``docs/``. No role imports this package (an import-linter contract).

Modules:

* :mod:`.paths`, :mod:`.datasets`: where data lives; the CellBench, PBMC, backend and research splits.
* :mod:`.metrics`: label transfer with the Unknown call, imputed proteins, composition distance.
* :mod:`.bundles`: the one helper that builds and signs a reference bundle (and the timed CLI build).
* :mod:`.methods`: the compared methods (fedarches, plain scvi-tools surgery, de novo scANVI, kNN / logistic
  regression on PCA, CellTypist, scib-metrics), each a step in a fresh process.
* :mod:`.runner`: the run's log and results file; running a step in a fresh process.
* :mod:`.federated`, :mod:`.simulation`: a round on loopback; many labs in Flower's simulation engine.
* :mod:`.suite`: `make bench` (PBMC, then CellBench); :mod:`.report_suite` renders its documents.
* :mod:`.backends`, :mod:`.report_backends`: `make bench-backends`.
* :mod:`.unknown`, :mod:`.report_unknown`: `make bench-unknown`; :mod:`.unknown_research`: issue 15's research.
* :mod:`.membership`, :mod:`.privacy_utility`, :mod:`.report_privacy`: `make privacy-eval`.
* :mod:`.compare`: `make compare`, fedarches against plain scvi-tools.

Importing the package or a report module needs none of the `bench` extra (scib-metrics, CellTypist, Ray);
the steps that use them import them.
"""

from __future__ import annotations

import time

# When this interpreter started, near enough: a step's ``process_s`` counts from here (imports included).
STARTED = time.perf_counter()
