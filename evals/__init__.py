"""The eval suite (registry, runner, results schema); evals land with issue #4."""
