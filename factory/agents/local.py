"""The local DSA model as an agent: `--agent dsa` serves our own model on loopback, in this
process, and the model agent (or the model solver) talks to it like to any
OpenAI-compatible server.

`--model` names a checkpoint directory (default: the one shipped in the package,
`model/checkpoints/agent`, distilled from the specialist by `python -m envfactory.model.train
distill`); `--base-url`
uses a server already running (`python -m envfactory.model.serve CKPT`) instead.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

__all__ = ["local_server", "DSA_DEFAULTS"]

# a small distilled model answers one move per reply; sampling gives each retry and round
# a different one, where greedy decoding would repeat itself
SLOTS = 4  # requests decoded together (the workers default to the CPU count); idle slots cost nothing on CPU

DSA_DEFAULTS = (("temperature", 0.7), ("timeout_s", 600.0), ("max_tokens", 512), ("rounds", 8), ("base_attempts", 8))


def _checkpoint(spec) -> Path:
    import envfactory.model

    return Path(spec.model) if spec.model else Path(envfactory.model.__file__).resolve().parent / "checkpoints" / "agent"


@contextmanager
def local_server(spec, quiet: bool = False):
    """Yields the spec to hand to workers: for `dsa` without a base URL, one pointing at a
    server started here on 127.0.0.1 (stopped on exit); any other spec unchanged."""
    if spec.kind != "dsa" or spec.base_url:
        yield spec
        return
    from envfactory.model.scheduler import Scheduler
    from envfactory.model.serve import ModelServer, load_pretrained

    from envfactory.factory.errors import UsageError

    ckpt = _checkpoint(spec)
    try:
        model, tok = load_pretrained(ckpt)
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"--agent dsa: cannot load the checkpoint: {e}") from None
    # the workers' requests are batched together and share their prompts' pages
    server = ModelServer(Scheduler(model, tok, slots=SLOTS), name=f"dsa:{ckpt.name}").start()
    if not quiet:
        print(f"dsa: serving {ckpt} ({model.num_params() / 1e6:.1f}M parameters) at {server.base_url}",
              file=sys.stderr)
    given = {k for k, _ in spec.options}
    options = tuple(spec.options) + tuple((k, v) for k, v in DSA_DEFAULTS if k not in given)
    try:
        yield replace(spec, base_url=server.base_url, model=server.name, options=options)
    finally:
        server.stop()
