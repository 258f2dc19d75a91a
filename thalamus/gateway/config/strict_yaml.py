"""YAML with duplicate keys refused: PyYAML keeps the last of two equal keys without a word.

A config with ``backends:`` twice (or a backend with two ``timeout:``) silently loses the first; both
``thalamus serve`` and ``thalamus config check`` read configs through ``load_yaml`` so either names the
key and both lines instead. Merge keys (``<<: *base``) still work: a key may override a merged one.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode

_MERGE = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping holds the same key twice; the message names the key and both lines."""


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise DuplicateKeyError(f"line {line}: key {key!r} appears twice in one mapping (first on line "
                                        f"{first}); YAML would keep only the last: merge the two or remove one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that raises DuplicateKeyError on a repeated key."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: safe
