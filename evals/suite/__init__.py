"""The suite machinery every eval shares: the registry (``registry``, ``builtin``), the eval base
class (``base``), what an eval receives (``context``), suite files (``suite_file``), running a
suite on a checkpoint (``runner``) or on a training run's checkpoints (``sweep``), results.json
and JUnit XML (``results``), the Markdown/HTML report (``report``), baseline comparisons
(``baseline``) and host provenance (``host``). Nothing here imports the evals themselves until
the registry is asked."""
