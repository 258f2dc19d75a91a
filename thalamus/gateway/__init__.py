"""The OpenAI-compatible routing gateway, in layers that import one way (docs/architecture.md):
``http`` -> ``core`` (the one pipeline) -> ``learning``, ``tenancy`` -> ``wire`` -> ``upstream`` -> ``stats``
-> ``config``; ``app`` composes them; ``replay`` (test upstream, faults, demo) sits on top and nothing
imports it back."""
