"""The factory pipeline: seeds, partitions, the agent and its difficulty ladder, bundles, CLI.

Contract: a task-type seed in; a directory of self-contained environments out (sandbox
database, generated tools, per-task verifiers, tasks whose solvability and feasible-plan
counts are measured). The CLI (`factory`) is a thin layer over `factory.generate.generate`.
"""

__all__ = ["generate"]


def __getattr__(name):  # lazy: importing the package does no work
    if name == "generate":
        from envfactory.factory.generate import generate

        return generate
    raise AttributeError(name)
